"""
The etcd registry, over etcd's own v3 JSON gateway (``/v3/kv/txn``,
``/v3/lease/grant`` ...) with Twisted's HTTP client.

Why the gateway and not a gRPC client library: it needs nothing beyond
Twisted, never blocks the reactor, and runs on every reactor the project
supports (aetcd would tie the encoder to the asyncio reactor, and etcd3's
gRPC client blocks). The gateway ships in every etcd 3.x server, Debian's
3.4 included; keys and values travel base64-encoded.

Ownership is two transactions. A claim reads the fence, then, only if no
owner key exists and the fence has not moved since it was read, raises the
fence and writes the owner key under a fresh lease. A state write succeeds
only if the owner key still holds exactly this claim (its value carries a
per-claim nonce), and reads the API's record in the same revision.

The list of videos is one range over the records sorted by create revision,
newest first, cut at the page's cursor by ``max_create_revision``; then only
that page's states and owners are read. etcd still sorts the whole prefix on
its side (it fetches every key when asked to sort), but only the page crosses
the network and is parsed here, on the reactor.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import treq
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks, succeed
from twisted.internet.error import (
    ConnectError,
    ConnectionRefusedError,
    DNSLookupError,
    TimeoutError,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from zope.interface import implementer

from fbstream.registry.base import (
    Claim,
    Fenced,
    IRegistry,
    Owned,
    Owner,
    RegistryUnavailable,
    VideoPage,
    new_owner,
)
from fbstream.registry.records import ListedVideo, VideoRecord, VideoState

if TYPE_CHECKING:
    # What treq and its Agent need of a reactor (a HostnameEndpoint's:
    # IReactorTCP, IReactorTime, IReactorPluggableNameResolver); treq's name
    # for it is private, so it is imported for the type checker only.
    from treq._types import _ITreqReactor

_JSON = Headers({b"content-type": [b"application/json"]})


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def _value(kv: dict[str, Any]) -> bytes:
    return base64.b64decode(kv.get("value", ""))


def _prefix_end(prefix: str) -> str:
    raw = prefix.encode()
    return _b64(raw[:-1] + bytes([raw[-1] + 1]))


class _NotFound(RegistryUnavailable):
    """etcd answered 404: what the request named (a lease) does not exist."""


@implementer(IRegistry)
class EtcdRegistry:
    #: etcd refuses a transaction of more operations than this (its
    #: ``--max-txn-ops``, 128 unless raised).
    MAX_TXN_OPS = 128

    def __init__(self, reactor: _ITreqReactor, urls: list[str], prefix: str = "/fbstream",
                 lease_seconds: float = 10.0, timeout: float = 3.0, http: Any = None) -> None:
        """
        ``http`` is what speaks to the gateway: a :class:`treq.client.HTTPClient`
        (by default one over a persistent pool on ``reactor``) or anything
        with its ``post``, such as :class:`treq.testing.StubTreq`.
        """
        if not urls:
            raise ValueError("no etcd URLs configured")
        self.reactor = reactor
        self.urls = [u.rstrip("/") for u in urls]
        self.prefix = prefix.rstrip("/")
        self.lease_seconds = lease_seconds
        self.timeout = timeout
        self.pool: HTTPConnectionPool | None = None
        if http is None:
            self.pool = HTTPConnectionPool(reactor, persistent=True)
            self.pool.retryAutomatically = False
            http = HTTPClient(Agent(reactor, pool=self.pool, connectTimeout=timeout))
        self.http = http
        self._next = 0
        self._watches: set[_VideoWatch] = set()

    def _key(self, kind: str, stream: str = "") -> str:
        return "%s/%s/%s" % (self.prefix, kind, stream)

    @inlineCallbacks
    def _call(self, path: str, body: dict[str, Any]) -> Any:
        """POST to the gateway, trying each configured member once."""
        data = json.dumps(body).encode()
        last: Any = None
        for attempt in range(len(self.urls)):
            url = self.urls[(self._next + attempt) % len(self.urls)]
            try:
                response = yield self.http.post(url + path, data=data, headers=_JSON, timeout=self.timeout,
                                                reactor=self.reactor)
                raw = yield treq.content(response)
            except (ConnectError, ConnectionRefusedError, DNSLookupError, TimeoutError, ResponseFailed,
                    ResponseNeverReceived, CancelledError) as e:
                last = e
                continue
            self._next = (self._next + attempt) % len(self.urls)
            if response.code != 200:
                error = _NotFound if response.code == 404 else RegistryUnavailable
                raise error("etcd answered %d to %s: %s" % (response.code, path, raw[:200]))
            return json.loads(raw)
        raise RegistryUnavailable("no etcd member answered: %s" % (last,))

    @inlineCallbacks
    def _get(self, key: str) -> Any:
        reply = yield self._call("/v3/kv/range", {"key": _b64(key)})
        kvs = reply.get("kvs") or []
        return kvs[0] if kvs else None

    @inlineCallbacks
    def _get_each(self, keys: list[str]) -> Any:
        """The values of those of ``keys`` that exist, by key."""
        values = {}
        for first in range(0, len(keys), self.MAX_TXN_OPS):
            chunk = keys[first:first + self.MAX_TXN_OPS]
            reply = yield self._call("/v3/kv/txn", {"success": [{"request_range": {"key": _b64(k)}} for k in chunk]})
            for key, response in zip(chunk, reply.get("responses") or []):
                kvs = (response.get("response_range") or {}).get("kvs") or []
                if kvs:
                    values[key] = _value(kvs[0])
        return values

    def _put(self, key: str, value: str) -> Deferred[Any]:
        return self._call("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})

    # The API's records -------------------------------------------------------

    def create_video(self, stream: str, record: VideoRecord) -> Deferred[None]:
        return self._put(self._key("videos", stream), record.to_json()).addCallback(lambda _: None)

    put_video = create_video

    @inlineCallbacks
    def get_video(self, stream: str) -> Any:
        kv = yield self._get(self._key("videos", stream))
        return VideoRecord.from_json(_value(kv)) if kv else None

    @inlineCallbacks
    def list_videos(self, limit: int, after: str | None = None) -> Any:
        prefix = self._key("videos")
        query = {"key": _b64(prefix), "range_end": _prefix_end(prefix), "limit": limit,
                 "sort_target": "CREATE", "sort_order": "DESCEND"}
        if after is not None:
            cursor = yield self._get(self._key("videos", after))
            if cursor is not None:
                # Every key's create revision is at least 2 (etcd starts empty
                # at 1), so this bound is never 0, which would mean none.
                query["max_create_revision"] = str(int(cursor["create_revision"]) - 1)
        reply = yield self._call("/v3/kv/range", query)
        kvs = reply.get("kvs") or []
        streams = [base64.b64decode(kv["key"]).decode()[len(prefix):] for kv in kvs]
        found = yield self._get_each([self._key(kind, s) for s in streams for kind in ("state", "owner")])
        videos = []
        for stream, kv in zip(streams, kvs):
            record = VideoRecord.from_json(_value(kv))
            state = found.get(self._key("state", stream))
            owner = found.get(self._key("owner", stream))
            videos.append(ListedVideo(record, VideoState.from_json(state) if state else None,
                                      Owner.from_json(owner) if owner else None))
        return VideoPage(videos, more=bool(reply.get("more")))

    # Ownership ---------------------------------------------------------------

    @inlineCallbacks
    def claim(self, stream: str, encoder: str, http: str) -> Any:
        owner_key = _b64(self._key("owner", stream))
        fence_key = _b64(self._key("fence", stream))
        for _ in range(5):
            fence_kv = yield self._get(self._key("fence", stream))
            fence = int(_value(fence_kv)) if fence_kv else 0
            fence_rev = fence_kv["mod_revision"] if fence_kv else "0"
            grant = yield self._call("/v3/lease/grant", {"TTL": max(2, round(self.lease_seconds))})
            lease = grant["ID"]
            owner = new_owner(encoder, http, fence + 1)
            reply = yield self._call("/v3/kv/txn", {
                "compare": [
                    {"key": owner_key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"},
                    {"key": fence_key, "target": "MOD", "result": "EQUAL", "mod_revision": fence_rev},
                ],
                "success": [
                    {"request_put": {"key": fence_key, "value": _b64(str(fence + 1))}},
                    {"request_put": {"key": owner_key, "value": _b64(owner.to_json()), "lease": lease}},
                ],
                "failure": [{"request_range": {"key": owner_key}}],
            })
            if reply.get("succeeded"):
                return Claim(stream, owner, lease)
            yield self._call("/v3/lease/revoke", {"ID": lease})
            kvs = (reply["responses"][0].get("response_range") or {}).get("kvs") or []
            if kvs:
                raise Owned(Owner.from_json(_value(kvs[0])))
            # The fence moved under us (a racing claim that since lapsed): again.
        raise RegistryUnavailable("claiming %s kept racing other claims" % (stream,))

    @inlineCallbacks
    def renew(self, claim: Claim) -> Any:
        reply = yield self._call("/v3/lease/keepalive", {"ID": claim.lease})
        result = reply.get("result", reply)
        if int(result.get("TTL", 0)) <= 0:
            raise Fenced(claim.stream)

    def _holds(self, claim: Claim) -> dict[str, Any]:
        return {"key": _b64(self._key("owner", claim.stream)), "target": "VALUE",
                "result": "EQUAL", "value": _b64(claim.owner.to_json())}

    @inlineCallbacks
    def release(self, claim: Claim) -> Any:
        yield self._call("/v3/kv/txn", {
            "compare": [self._holds(claim)],
            "success": [{"request_delete_range": {"key": _b64(self._key("owner", claim.stream))}}],
        })
        try:
            yield self._call("/v3/lease/revoke", {"ID": claim.lease})
        except _NotFound:
            pass  # it lapsed (or was released before): nothing is held under it

    @inlineCallbacks
    def owner(self, stream: str) -> Any:
        kv = yield self._get(self._key("owner", stream))
        return Owner.from_json(_value(kv)) if kv else None

    @inlineCallbacks
    def read_state(self, stream: str) -> Any:
        kv = yield self._get(self._key("state", stream))
        return VideoState.from_json(_value(kv)) if kv else None

    @inlineCallbacks
    def write_state(self, claim: Claim, state: VideoState) -> Any:
        reply = yield self._call("/v3/kv/txn", {
            "compare": [self._holds(claim)],
            "success": [
                {"request_put": {"key": _b64(self._key("state", claim.stream)), "value": _b64(state.to_json())}},
                {"request_range": {"key": _b64(self._key("videos", claim.stream))}},
            ],
        })
        if not reply.get("succeeded"):
            raise Fenced(claim.stream)
        kvs = (reply["responses"][1].get("response_range") or {}).get("kvs") or []
        return VideoRecord.from_json(_value(kvs[0])) if kvs else None

    # Watching ----------------------------------------------------------------

    def watch_videos(self, changed: Callable[[str, VideoRecord], None]) -> Callable[[], None]:
        watch = _VideoWatch(self, changed)
        self._watches.add(watch)

        def stop() -> None:
            self._watches.discard(watch)
            watch.stop()

        return stop

    def close(self) -> Deferred[Any]:
        for watch in list(self._watches):
            watch.stop()
        self._watches.clear()
        return self.pool.closeCachedConnections() if self.pool is not None else succeed(None)


class _VideoWatch:
    """
    One streaming ``/v3/watch`` of the API's records, whose response never
    ends: the gateway sends one JSON object per line as records are written.
    When it drops (a member restarts, the network), it is opened again on the
    next member from the revision after the last one seen, so no write is
    missed unless etcd has compacted it away meanwhile.
    """

    log = Logger()
    RETRY_SECONDS = 1.0
    #: A line longer than this is not one of etcd's: drop the watch and reopen.
    MAX_LINE = 1 << 20

    def __init__(self, registry: EtcdRegistry, changed: Callable[[str, VideoRecord], None]) -> None:
        self.registry = registry
        self.changed = changed
        self.prefix = registry._key("videos")
        self.revision: int | None = None
        self.stopped = False
        self._buffer = b""
        self._request: Deferred[Any] | None = None
        self._retry: Any = None
        self._open()

    def _open(self) -> None:
        self._retry = None
        self._buffer = b""
        registry = self.registry
        create: dict[str, Any] = {"key": _b64(self.prefix), "range_end": _prefix_end(self.prefix)}
        if self.revision is not None:
            create["start_revision"] = str(self.revision + 1)
        url = registry.urls[registry._next % len(registry.urls)]
        # Unbuffered: treq would otherwise keep every byte of this endless
        # response for as long as it lasts.
        d = registry.http.post(url + "/v3/watch", data=json.dumps({"create_request": create}).encode(),
                               headers=_JSON, reactor=registry.reactor, unbuffered=True)
        d.addCallback(self._streaming)
        d.addBoth(self._closed)
        self._request = d

    def _streaming(self, response: Any) -> Deferred[None]:
        if response.code != 200:
            raise RegistryUnavailable("etcd answered %d to a watch" % (response.code,))
        body = _Body(self._data)
        response.deliverBody(body)
        return body.done

    def _data(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > self.MAX_LINE:
            raise RegistryUnavailable("the watch sent a line of more than %d bytes" % (self.MAX_LINE,))
        for line in lines:
            if line.strip():
                self._message(json.loads(line))

    def _message(self, message: dict[str, Any]) -> None:
        result = message.get("result")
        if result is None:
            raise RegistryUnavailable("the watch failed: %s" % (str(message.get("error"))[:200],))
        if result.get("compact_revision") not in (None, "0"):
            self.revision = None  # what we missed is gone: watch from now
            raise RegistryUnavailable("the watch fell behind etcd's compaction")
        header = result.get("header") or {}
        if self.revision is None and header.get("revision"):
            self.revision = int(header["revision"])
        for event in result.get("events") or []:
            kv = event.get("kv") or {}
            self.revision = max(self.revision or 0, int(kv.get("mod_revision", 0)))
            if event.get("type", "PUT") != "PUT":
                continue
            stream = base64.b64decode(kv["key"]).decode()[len(self.prefix):]
            try:
                record = VideoRecord.from_json(_value(kv))
            except (ValueError, KeyError, TypeError):
                continue
            try:
                self.changed(stream, record)
            except Exception:
                self.log.failure("handling the API's record of {stream}", stream=stream)

    def _closed(self, result: Any) -> None:
        self._request = None
        if self.stopped:
            return
        why = result.getErrorMessage() if hasattr(result, "getErrorMessage") else "it ended"
        self.log.warn("the etcd watch of live videos dropped ({why}); reopening", why=why)
        registry = self.registry
        registry._next = (registry._next + 1) % len(registry.urls)
        self._retry = registry.reactor.callLater(self.RETRY_SECONDS, self._open)

    def stop(self) -> None:
        self.stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._request is not None:
            self._request.cancel()


class _Body(Protocol):
    """
    A streaming response's body, handed to ``received`` as it arrives. Unlike
    treq.collect's, its ``done`` can be cancelled, and that closes the
    connection: a stopped watch hears nothing more and holds no socket.
    """

    def __init__(self, received: Callable[[bytes], None]) -> None:
        self.received = received
        self.done: Deferred[None] = Deferred(lambda _: self._close())

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        try:
            self.received(data)
        except Exception:
            self.done.errback()
            self._close()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)
