"""
A fake of etcd's v3 JSON gateway, in memory, for EtcdRegistry's unit tests
through :class:`treq.testing.StubTreq`.

It holds only what the registry uses, with etcd's semantics as etcd 3.4
shows them on the wire: one revision per write request (a transaction's
writes share one), keys that keep their create revision when rewritten,
ranges filtered by create revision, sorted, cut at ``limit`` with ``more``;
transactions comparing CREATE, MOD, VERSION or VALUE (a VALUE compare on a
missing key fails) and refusing more than 128 operations; leases that lapse
on a Clock and take their keys with them, a keepalive of a lapsed lease
answered with no TTL, a revoke of one with 404; a watch streaming one JSON
object per line, replaying from ``start_revision``. Numbers travel as strings
and zero values are left out, as the gateway does.
"""

from __future__ import annotations

import base64
import json
import operator
from collections.abc import Callable
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

MAX_TXN_OPS = 128

_RESULTS = {"EQUAL": operator.eq, "NOT_EQUAL": operator.ne, "GREATER": operator.gt, "LESS": operator.lt}
_SORTED = {"KEY": "key", "CREATE": "create_revision", "MOD": "mod_revision", "VERSION": "version"}


class GatewayError(Exception):
    """What the gateway answers a refused request with: an HTTP code and gRPC's."""

    def __init__(self, http: int, grpc: int, message: str) -> None:
        super().__init__(message)
        self.http = http
        self.grpc = grpc


LEASE_NOT_FOUND = (404, 5, "etcdserver: requested lease not found")


def _decode(text: str | None) -> bytes:
    return base64.b64decode(text or "")


def _number(text: str | None) -> int:
    return int(text or 0)


#: What each compare target reads of a key, and how its wanted value is parsed (a number or bytes).
_COMPARED: dict[str, tuple[str, Callable[[str | None], Any]]] = {"CREATE": ("create_revision", _number), "MOD": ("mod_revision", _number),
             "VERSION": ("version", _number), "VALUE": ("value", _decode)}


def _wire(kv: dict[str, Any]) -> dict[str, Any]:
    out = {"key": base64.b64encode(kv["key"]).decode(), "create_revision": str(kv["create_revision"]),
           "mod_revision": str(kv["mod_revision"]), "version": str(kv["version"])}
    if kv["value"]:
        out["value"] = base64.b64encode(kv["value"]).decode()
    if kv["lease"]:
        out["lease"] = str(kv["lease"])
    return out


class FakeEtcd(Resource):
    isLeaf = True

    def __init__(self, clock: Any) -> None:
        super().__init__()
        self.clock = clock
        self.revision = 1
        #: key -> {key, value, create_revision, mod_revision, version, lease}
        self.kvs: dict[bytes, dict[str, Any]] = {}
        #: lease id -> [ttl, expiry]
        self.leases: dict[int, list[float]] = {}
        self._next_lease = 7_000
        #: Every change, for watches that start in the past: (revision, event).
        self.history: list[tuple[int, dict[str, Any]]] = []
        self.watches: list[tuple[Request, bytes, bytes]] = []
        #: Every request the registry made: (path, body).
        self.requests: list[tuple[str, dict[str, Any]]] = []
        #: While set, every request is answered with this HTTP code.
        self.failing: int | None = None
        #: Members (by host name) that drop each connection unanswered, or
        #: never answer: "drop" or "hang".
        self.broken: dict[str, str] = {}

    # Serving -------------------------------------------------------------

    def render_POST(self, request: Request) -> bytes | int:
        path = request.path.decode()
        body = json.loads(request.content.read() if request.content is not None else b"{}")
        self.requests.append((path, body))
        broken = self.broken.get(request.getRequestHostname().decode())
        if broken == "drop":
            transport = request.channel.transport
            assert transport is not None
            transport.loseConnection()
        if broken is not None:
            return NOT_DONE_YET
        if self.failing is not None:
            request.setResponseCode(self.failing)
            return b"the member is unwell\n"
        self.expire()
        if path == "/v3/watch":
            return self._watch(request, body["create_request"])
        handler = {"/v3/kv/range": self.range, "/v3/kv/put": self.put, "/v3/kv/txn": self.txn,
                   "/v3/lease/grant": self.grant, "/v3/lease/keepalive": self.keepalive,
                   "/v3/lease/revoke": self.revoke}.get(path)
        if handler is None:
            request.setResponseCode(404)
            return b"Not Found\n"
        try:
            reply = handler(body)
        except GatewayError as e:
            request.setResponseCode(e.http)
            reply = {"error": str(e), "message": str(e), "code": e.grpc}
        return json.dumps(reply).encode() + b"\n"

    def _header(self) -> dict[str, Any]:
        return {"revision": str(self.revision)}

    # The key space -----------------------------------------------------------

    def _select(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        key, end = _decode(body.get("key")), _decode(body.get("range_end"))
        if not end:
            return [self.kvs[key]] if key in self.kvs else []
        return [kv for k, kv in sorted(self.kvs.items()) if key <= k < end]

    def range(self, body: dict[str, Any]) -> dict[str, Any]:
        kvs = self._select(body)
        count = len(kvs)
        for field, keep in (("min_create_revision", operator.ge), ("max_create_revision", operator.le)):
            bound = int(body.get(field, 0))
            if bound:
                kvs = [kv for kv in kvs if keep(kv["create_revision"], bound)]
        order, target = body.get("sort_order", "NONE"), body.get("sort_target", "KEY")
        if target != "KEY" and order == "NONE":
            order = "ASCEND"
        if order != "NONE":
            kvs.sort(key=lambda kv: kv[_SORTED[target]], reverse=order == "DESCEND")
        out: dict[str, Any] = {"header": self._header()}
        limit = int(body.get("limit", 0))
        if limit and len(kvs) > limit:
            kvs, out["more"] = kvs[:limit], True
        if kvs:
            out["kvs"] = [_wire(kv) for kv in kvs]
        if count:
            out["count"] = str(count)
        return out

    def _write(self, key: bytes, value: bytes, lease: int, revision: int) -> None:
        old = self.kvs.get(key)
        kv = {"key": key, "value": value, "lease": lease, "mod_revision": revision,
              "create_revision": old["create_revision"] if old else revision,
              "version": old["version"] + 1 if old else 1}
        self.kvs[key] = kv
        self._changed(revision, {"kv": _wire(kv)})

    def _delete(self, key: bytes, revision: int) -> int:
        if self.kvs.pop(key, None) is None:
            return 0
        wire = {"key": base64.b64encode(key).decode(), "mod_revision": str(revision)}
        self._changed(revision, {"type": "DELETE", "kv": wire})
        return 1

    def _check_lease(self, body: dict[str, Any]) -> int:
        lease = int(body.get("lease", 0))
        if lease and lease not in self.leases:
            raise GatewayError(*LEASE_NOT_FOUND)
        return lease

    def put(self, body: dict[str, Any]) -> dict[str, Any]:
        lease = self._check_lease(body)
        self.revision += 1
        self._write(_decode(body["key"]), _decode(body.get("value")), lease, self.revision)
        return {"header": self._header()}

    def _compare(self, compare: dict[str, Any]) -> bool:
        target = compare.get("target", "VERSION")
        field, parse = _COMPARED[target]
        kv = self.kvs.get(_decode(compare["key"]))
        if kv is None and target == "VALUE":
            return False
        have = kv[field] if kv else 0
        return bool(_RESULTS[compare.get("result", "EQUAL")](have, parse(compare.get(field))))

    def txn(self, body: dict[str, Any]) -> dict[str, Any]:
        if any(len(body.get(part) or []) > MAX_TXN_OPS for part in ("compare", "success", "failure")):
            raise GatewayError(400, 3, "etcdserver: too many operations in txn request")
        succeeded = all(self._compare(c) for c in body.get("compare") or [])
        ops = body.get("success" if succeeded else "failure") or []
        for op in ops:
            if "request_put" in op:
                self._check_lease(op["request_put"])
        writes = any("request_range" not in op for op in ops)
        revision = self.revision + 1 if writes else self.revision
        responses = []
        for op in ops:
            if "request_range" in op:
                responses.append({"response_range": self.range(op["request_range"])})
            elif "request_put" in op:
                put = op["request_put"]
                self._write(_decode(put["key"]), _decode(put.get("value")), int(put.get("lease", 0)), revision)
                responses.append({"response_put": {"header": {"revision": str(revision)}}})
            else:
                deleted = self._delete(_decode(op["request_delete_range"]["key"]), revision)
                responses.append({"response_delete_range": {"header": {"revision": str(revision)},
                                                            **({"deleted": str(deleted)} if deleted else {})}})
        self.revision = revision
        out: dict[str, Any] = {"header": self._header()}
        if succeeded:
            out["succeeded"] = True
        if responses:
            out["responses"] = responses
        return out

    # Leases ------------------------------------------------------------------

    def grant(self, body: dict[str, Any]) -> dict[str, Any]:
        ttl = int(body["TTL"])
        self._next_lease += 1
        self.leases[self._next_lease] = [ttl, self.clock.seconds() + ttl]
        return {"header": self._header(), "ID": str(self._next_lease), "TTL": str(ttl)}

    def keepalive(self, body: dict[str, Any]) -> dict[str, Any]:
        lease = int(body["ID"])
        result: dict[str, Any] = {"header": self._header(), "ID": str(lease)}
        if lease in self.leases:
            ttl = self.leases[lease][0]
            self.leases[lease][1] = self.clock.seconds() + ttl
            result["TTL"] = str(int(ttl))
        return {"result": result}

    def revoke(self, body: dict[str, Any]) -> dict[str, Any]:
        lease = int(body["ID"])
        if lease not in self.leases:
            raise GatewayError(*LEASE_NOT_FOUND)
        self._end_lease(lease)
        return {"header": self._header()}

    def _end_lease(self, lease: int) -> None:
        del self.leases[lease]
        held = [key for key, kv in self.kvs.items() if kv["lease"] == lease]
        if held:
            self.revision += 1
            for key in held:
                self._delete(key, self.revision)

    def expire(self) -> None:
        """Lapse the leases whose time is up, as etcd's lessor does."""
        now = self.clock.seconds()
        for lease in [lease for lease, (_, expiry) in self.leases.items() if expiry <= now]:
            self._end_lease(lease)

    # Watching ----------------------------------------------------------------

    def _watch(self, request: Request, create: dict[str, Any]) -> int:
        start, end = _decode(create["key"]), _decode(create.get("range_end"))
        watch = (request, start, end)
        self.watches.append(watch)
        request.notifyFinish().addBoth(lambda _: self.watches.remove(watch))
        self._send(request, {"header": self._header(), "created": True})
        since = int(create.get("start_revision", 0))
        if since:
            events = [e for revision, e in self.history if revision >= since and self._watched(watch, e)]
            if events:
                self._send(request, {"header": self._header(), "events": events})
        return NOT_DONE_YET

    @staticmethod
    def _watched(watch: tuple[Request, bytes, bytes], event: dict[str, Any]) -> bool:
        _, start, end = watch
        return start <= _decode(event["kv"]["key"]) < end

    @staticmethod
    def _send(request: Request, result: dict[str, Any]) -> None:
        request.write(json.dumps({"result": result}).encode() + b"\n")

    def _changed(self, revision: int, event: dict[str, Any]) -> None:
        self.history.append((revision, event))
        header = {"revision": str(revision)}
        for watch in list(self.watches):
            if self._watched(watch, event):
                self._send(watch[0], {"header": header, "events": [event]})

    def drop_watches(self) -> None:
        """End every watch's response, as a member that restarts does."""
        for request, _, _ in list(self.watches):
            request.finish()
