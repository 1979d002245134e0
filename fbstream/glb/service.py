"""
The ``glb`` role's HTTP side and its clock.

- ``POST /v1/load``: a PoP process's report, once a second (``part`` tells
  a PoP's worker processes apart; the PoP's load is the sum of its parts).
  With a secret, it carries ``Authorization: Bearer <secret>``. The answer
  is what the PoP's safety valve needs (:meth:`GLB.valve_answer`).
- ``POST /v1/rtt``: a player's round-trip times to PoPs, ``{"rtt": {pop:
  ms}}``, for the network of the address it comes from; rate-limited per
  address.
- ``GET /v1/map``: the PoPs for the asking client's network, best first,
  with their URLs. ``?client=<address>`` asks for another client's (the
  live API, for the viewer calling it); with a secret, for its holders only.
- ``GET /v1/steering``: the same order as a DASH Content Steering document
  (``PATHWAY-PRIORITY`` of PoP names, which are the MPD's BaseURL
  ``serviceLocation``\\s).
- ``GET /v1/state``: loads, predictions, capacities and the plan; with a
  secret, for its holders only.

Each ``glb.interval`` the fresh reports are summed per PoP and handed to the
:class:`~fbstream.glb.balance.Balancer`, whose problem (a prediction per
client network: O(networks)) is built and solved on a thread of its own; the
reactor only sums reports, adopts plans and answers from them. A decision
due while the last is still on the thread is skipped, and the reports wait
for the next (the thread reads them; players' maps and measurements go on).
"""

from __future__ import annotations

import hmac
import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from prometheus_client import Gauge, Histogram
from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import Resource
from twisted.web.server import Request

from fbstream.glb.balance import Balancer, Plan, network_of, solve
from fbstream.ratelimit import KeyedBuckets

#: Networks one report may name (a PoP sends its busiest).
MAX_REPORTED_NETWORKS = 2000
#: Processes one PoP may report as.
MAX_PARTS = 256
#: A figure larger than this in a report is a mistake.
MAX_FIGURE = 1e12
#: A round trip longer than this is no measurement, ms.
MAX_RTT_MS = 60_000.0
#: A PoP this full (a share of its capacity) is told where its new viewers could go instead,
#: for its busiest networks (the others go by room).
VALVE_MAPS_FROM = 0.5
VALVE_NETWORKS = 200

POP_LOAD = Gauge("fbstream_glb_pop_viewers", "viewers each PoP reported (all its processes)", ["pop"])
POP_PREDICTED = Gauge("fbstream_glb_pop_predicted_viewers",
                      "viewers each PoP is predicted to carry when the current plan ends", ["pop"])
POP_CAPACITY = Gauge("fbstream_glb_pop_capacity_viewers", "each PoP's capacity, viewers", ["pop"])
POP_ALIVE = Gauge("fbstream_glb_pop_alive", "1 while a PoP reports, 0 once it is down", ["pop"])
POP_FIRST = Gauge("fbstream_glb_pop_networks_first",
                  "client networks whose new viewers the plan sends mostly to each PoP", ["pop"])
POP_ASSIGNED = Gauge("fbstream_glb_pop_assigned_viewers",
                     "new viewers the plan gives each PoP while it is in force", ["pop"])
OVERFLOW = Gauge("fbstream_glb_overflow_viewers", "predicted new viewers that fit in no PoP's headroom")
SOLVE = Histogram("fbstream_glb_solve_seconds", "one decision (its prediction and linear program), on the balancer's thread",
                  buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
SKIPPED = Gauge("fbstream_glb_solves_skipped", "decisions skipped because the last solve was still running")


class BadReport(ValueError):
    """A report or measurement that cannot be used; the message says why."""


@attrs.define
class Part:
    """One PoP process's last report."""

    received: float
    capacity: float
    viewers: float
    networks: dict[str, float]
    figures: dict[str, float]


def _figure(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= MAX_FIGURE:
        raise BadReport("%s: a number from 0 to %g" % (name, MAX_FIGURE))
    return float(value)


def parse_report(body: Any, pops: Mapping[str, str]) -> tuple[str, int, Part]:
    """``(pop, part, report)`` from a ``/v1/load`` body, or :class:`BadReport`."""
    if not isinstance(body, dict):
        raise BadReport("a report is a JSON object")
    pop = body.get("pop")
    if not isinstance(pop, str) or pop not in pops:
        raise BadReport("pop: one of %s" % (", ".join(sorted(pops)),))
    part = body.get("part", 0)
    if isinstance(part, bool) or not isinstance(part, int) or not 0 <= part < MAX_PARTS:
        raise BadReport("part: a number from 0 to %d" % (MAX_PARTS - 1,))
    networks = body.get("networks", {})
    if not isinstance(networks, dict) or len(networks) > MAX_REPORTED_NETWORKS:
        raise BadReport("networks: an object of at most %d networks" % (MAX_REPORTED_NETWORKS,))
    counted: dict[str, float] = {}
    for network, viewers in networks.items():
        try:
            key = network_of(str(network).split("/", 1)[0])
        except ValueError:
            raise BadReport("networks: %.64r is not a network" % (network,)) from None
        counted[key] = counted.get(key, 0.0) + _figure(viewers, "networks")
    figures = {name: _figure(body.get(name, 0), name) for name in ("requests", "egress", "cpu")}
    return pop, part, Part(0.0, _figure(body.get("capacity"), "capacity"), _figure(body.get("viewers"), "viewers"),
                           counted, figures)


def parse_rtt(body: Any, pops: Mapping[str, str]) -> dict[str, float]:
    """``{pop: ms}`` from a ``/v1/rtt`` body, or :class:`BadReport`."""
    rtt = body.get("rtt") if isinstance(body, dict) else None
    if not isinstance(rtt, dict) or not rtt:
        raise BadReport('a measurement is {"rtt": {"<pop>": <ms>, ...}}')
    out = {}
    for pop, ms in rtt.items():
        if pop not in pops:
            raise BadReport("rtt: %.64r is not a PoP" % (pop,))
        if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not 0 <= ms <= MAX_RTT_MS:
            raise BadReport("rtt: milliseconds from 0 to %d" % (MAX_RTT_MS,))
        out[pop] = float(ms)
    return out


class GLB(Service):
    """The balancer on a clock: the PoPs' parts summed into one report each, then a plan solved on a thread."""

    log = Logger()

    def __init__(self, reactor: Any, balancer: Balancer, pops: Mapping[str, str], pool: ThreadPool,
                 solver: Callable[[Any], Plan] = solve) -> None:
        self.reactor = reactor
        self.balancer = balancer
        self.pops = dict(pops)
        self.pool = pool
        self.solver = solver
        self.parts: dict[str, dict[int, Part]] = {name: {} for name in pops}
        self.solving = False
        self._clock: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._clock = LoopingCall(self.tick)
        self._clock.clock = self.reactor
        self._clock.start(self.balancer.interval, now=False).addErrback(
            lambda f: self.log.failure("the balancer's clock stopped", f))

    def stopService(self) -> Any:
        if self._clock is not None and self._clock.running:
            self._clock.stop()
        return super().stopService()

    def take(self, pop: str, part: int, report: Part) -> None:
        report.received = self.reactor.seconds()
        self.parts[pop][part] = report

    def tick(self) -> None:
        now = self.reactor.seconds()
        solving = self.solving
        for pop, parts in self.parts.items():
            for number in [n for n, p in parts.items() if now - p.received > self.balancer.down_after]:
                del parts[number]
            if not parts:
                POP_ALIVE.labels(pop=pop).set(0)
                continue
            if solving:
                # The thread reads the balancer's reports: they wait (the
                # parts keep the newest) for the next tick after it is
                # done; only that the PoP is alive is said now, so that a
                # slow decision does not take live PoPs off the maps.
                self.balancer.heard(pop, sum(p.received for p in parts.values()) / len(parts))
                continue
            networks: dict[str, float] = {}
            for p in parts.values():
                for network, viewers in p.networks.items():
                    networks[network] = networks.get(network, 0.0) + viewers
            figures = {name: sum(p.figures.get(name, 0.0) for p in parts.values())
                       for name in ("requests", "egress", "cpu")}
            viewers = sum(p.viewers for p in parts.values())
            # The reports' time is when they came: their age counts.
            taken = sum(p.received for p in parts.values()) / len(parts)
            self.balancer.report(taken, pop, max(p.capacity for p in parts.values()), viewers, networks, **figures)
            POP_LOAD.labels(pop=pop).set(viewers)
            POP_CAPACITY.labels(pop=pop).set(self.balancer.pops[pop].capacity)
            POP_ALIVE.labels(pop=pop).set(1)
        if solving:
            SKIPPED.inc()
            return
        self.solving = True

        def timed(now: float) -> tuple[Plan, float]:
            started = time.perf_counter()
            plan = self.solver(self.balancer.problem(now))
            return plan, time.perf_counter() - started

        def adopt(result: tuple[Plan, float]) -> None:
            plan, took = result
            SOLVE.observe(took)
            self.balancer.adopt(plan, now)
            self._publish(plan)

        def done(result: Any) -> Any:
            self.solving = False
            return result

        d = deferToThreadPool(self.reactor, self.pool, timed, now)
        d.addCallback(adopt)
        d.addBoth(done)
        d.addErrback(lambda f: self.log.failure("a plan could not be made", f))

    def _publish(self, plan: Plan) -> None:
        first: dict[str, int] = dict.fromkeys(self.pops, 0)
        given: dict[str, float] = dict.fromkeys(self.pops, 0.0)
        for shares in plan.shares.values():
            if shares and shares[0][0] in first:
                first[shares[0][0]] += 1
        for assigned in plan.assigned.values():
            for pop, viewers in assigned.items():
                if pop in given:
                    given[pop] += viewers
        for pop in self.pops:
            POP_FIRST.labels(pop=pop).set(first[pop])
            POP_ASSIGNED.labels(pop=pop).set(given[pop])
            state = self.balancer.pops.get(pop)
            POP_PREDICTED.labels(pop=pop).set(state.predicted if state is not None else 0)
        OVERFLOW.set(plan.overflow)

    def valve_answer(self, pop: str, report: Part) -> dict[str, Any]:
        """
        What a PoP process's report is answered with: the PoP's viewers in
        all its processes (so that each knows when the PoP is full), and
        where the PoP may redirect new viewers once it is: the PoPs for each
        of the report's :data:`VALVE_NETWORKS` busiest networks, and for any
        other (its safety valve, kept for when the balancer cannot be
        reached). The maps come only once the PoP is half full; until then
        it has no use for them.
        """
        now = self.reactor.seconds()
        parts = [p for p in self.parts[pop].values() if now - p.received <= self.balancer.down_after]
        viewers = sum(p.viewers for p in parts)
        capacity = max((p.capacity for p in parts), default=report.capacity)
        near = viewers >= VALVE_MAPS_FROM * capacity
        busiest = sorted(report.networks, key=lambda n: -report.networks[n])[:VALVE_NETWORKS] if near else ()
        maps, spill = self.balancer.elsewhere(pop, busiest, now)
        return {"accepted": True, "viewers": viewers, "maps": maps, "spill": spill,
                "urls": {name: self.pops[name] for name in spill}}

    def order(self, address: str) -> tuple[str, list[str]]:
        """The client's network and its PoPs, best first."""
        network = network_of(address)
        return network, self.balancer.order(network, self.reactor.seconds())


class V1Resource(Resource):
    """``/v1/...``: see the module's description."""

    isLeaf = True
    log = Logger()

    def __init__(self, glb: GLB, secret: bytes | None, steering_ttl: int, rtt_rate: float = 1.0) -> None:
        super().__init__()
        self.glb = glb
        self.secret = secret
        self.steering_ttl = steering_ttl
        self.rtt_limits = KeyedBuckets(rtt_rate, 5)

    def render(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        name = (request.postpath or [b""])[0]
        method = request.method
        routes: dict[tuple[bytes, bytes], Callable[[Request], bytes]] = {
            (b"POST", b"load"): self._load,
            (b"POST", b"rtt"): self._rtt,
            (b"GET", b"map"): self._map,
            (b"GET", b"steering"): self._steering,
            (b"GET", b"state"): self._state,
        }
        handler = routes.get((method, name))
        if handler is None:
            known = {path for _, path in routes}
            if name in known:
                return self._answer(request, 405, {"error": "not with %s" % (method.decode("ascii", "replace"),)})
            return self._answer(request, 404, {"error": "no such resource"})
        if name in (b"rtt", b"map", b"steering"):
            # Asked by players on any page: readable across origins.
            request.setHeader(b"access-control-allow-origin", b"*")
        return handler(request)

    def _answer(self, request: Request, code: int, body: Any, cache: bytes = b"no-store") -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"cache-control", cache)
        return json.dumps(body).encode() + b"\n"

    def _authorised(self, request: Request) -> bool:
        if self.secret is None:
            return True
        given = request.getHeader(b"authorization") or b""
        return hmac.compare_digest(given.encode() if isinstance(given, str) else given, b"Bearer " + self.secret)

    def _body(self, request: Request) -> Any:
        raw = request.content.read() if request.content is not None else b""
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise BadReport("the body is not JSON") from None

    def _load(self, request: Request) -> bytes:
        if not self._authorised(request):
            return self._answer(request, 401, {"error": "a wrong or missing bearer secret"})
        try:
            pop, part, report = parse_report(self._body(request), self.glb.pops)
        except BadReport as e:
            return self._answer(request, 400, {"error": str(e)})
        self.glb.take(pop, part, report)
        return self._answer(request, 200, self.glb.valve_answer(pop, report))

    def _client(self, request: Request) -> str:
        return str(getattr(request.getClientAddress(), "host", "") or "")

    def _rtt(self, request: Request) -> bytes:
        address = self._client(request)
        wait = self.rtt_limits.take(address, self.glb.reactor.seconds())
        if wait > 0:
            request.setHeader(b"retry-after", b"%d" % (math.ceil(wait),))
            return self._answer(request, 429, {"error": "too many measurements from this address"})
        try:
            rtt = parse_rtt(self._body(request), self.glb.pops)
            network = network_of(address)
        except (BadReport, ValueError) as e:
            return self._answer(request, 400, {"error": str(e)})
        for pop, ms in rtt.items():
            self.glb.balancer.measured(network, pop, ms)
        return self._answer(request, 200, {"network": network})

    def _ordered(self, request: Request, address: str | None = None) -> tuple[str, list[str]] | None:
        try:
            return self.glb.order(address if address is not None else self._client(request))
        except ValueError:
            return None

    def _map(self, request: Request) -> bytes:
        args: dict[bytes, list[bytes]] = request.args or {}
        client = args.get(b"client")
        address = None
        if client:
            # Another client's map places a viewer in its network: only
            # for those the balancer trusts (a PoP's live API).
            if not self._authorised(request):
                return self._answer(request, 401, {"error": "a wrong or missing bearer secret"})
            address = client[0].decode("ascii", "replace")
        found = self._ordered(request, address)
        if found is None:
            return self._answer(request, 400, {"error": "no network for this client's address"})
        network, order = found
        return self._answer(request, 200, {
            "network": network,
            "pops": [{"name": pop, "url": self.glb.pops[pop]} for pop in order],
            "ttl": self.steering_ttl,
        }, b"private, max-age=%d" % (self.steering_ttl,))

    def _steering(self, request: Request) -> bytes:
        found = self._ordered(request)
        order = found[1] if found is not None else []
        # With no PoP alive, every PoP, in the configured order: a player
        # keeps what it has rather than being told of nowhere.
        return self._answer(request, 200, {
            "VERSION": 1,
            "TTL": self.steering_ttl,
            "PATHWAY-PRIORITY": order or list(self.glb.pops),
        }, b"private, max-age=%d" % (self.steering_ttl,))

    def _state(self, request: Request) -> bytes:
        if not self._authorised(request):
            return self._answer(request, 401, {"error": "a wrong or missing bearer secret"})
        state = self.glb.balancer.state(self.glb.reactor.seconds())
        state["urls"] = self.glb.pops
        return self._answer(request, 200, state)
