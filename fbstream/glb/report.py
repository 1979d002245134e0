"""
A PoP process's load, reported to the global load balancer once a second.

Each process that serves viewers reports for itself (``part``: the worker's
number, 0 for a PoP in one process); the balancer sums a PoP's parts. A
report is the process's open viewer connections (one per watching player:
they keep theirs alive), the busiest client networks among them, and its
requests, egress bytes and CPU per second. A report that fails is not
retried: the next second's replaces it, and a balancer that hears nothing
for a few seconds treats the PoP as down. Each answer tells the PoP's
safety valve (:mod:`fbstream.glb.valve`) what it needs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from treq.client import HTTPClient
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool

from fbstream.glb.balance import network_of
from fbstream.glb.service import MAX_REPORTED_NETWORKS


@attrs.frozen
class Counts:
    """What a process has counted since it started: the reporter turns them into rates."""

    requests: float = 0.0
    egress: float = 0.0


def networks_of(by_address: Mapping[str, int], most: int = MAX_REPORTED_NETWORKS) -> dict[str, int]:
    """Connections per client network, the ``most`` busiest."""
    counted: dict[str, int] = {}
    for address, connections in by_address.items():
        try:
            network = network_of(address)
        except ValueError:
            continue
        counted[network] = counted.get(network, 0) + connections
    if len(counted) > most:
        counted = dict(sorted(counted.items(), key=lambda item: -item[1])[:most])
    return counted


class LoadReporter(Service):
    """Every ``interval`` seconds, ``POST url`` the process's load (one report in flight at most)."""

    log = Logger()

    def __init__(self, reactor: Any, url: str, pop: str, part: int, capacity: float, secret: bytes | None,
                 viewers: Callable[[], Mapping[str, int]], counts: Callable[[], Counts],
                 interval: float = 1.0, http: Any = None,
                 heard: Callable[[Any, float], None] | None = None) -> None:
        """
        ``http`` speaks to the balancer: a :class:`treq.client.HTTPClient`
        (or ``StubTreq``). ``heard`` is given each answer (JSON) and the
        viewers its report said this process carries.
        """
        self.reactor = reactor
        self.url = url.rstrip("/") + "/v1/load"
        self.pop = pop
        self.part = part
        self.capacity = capacity
        self.secret = secret
        self.viewers = viewers
        self.counts = counts
        self.interval = interval
        self.http = http or HTTPClient(Agent(reactor, connectTimeout=interval * 2, pool=HTTPConnectionPool(reactor)))
        self.heard = heard
        self.failing = False
        self._pending: Deferred[Any] | None = None
        self._last: tuple[float, Counts, float] | None = None
        self._clock: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._clock = LoopingCall(self.report)
        self._clock.clock = self.reactor
        self._clock.start(self.interval, now=True)

    def stopService(self) -> Any:
        if self._clock is not None and self._clock.running:
            self._clock.stop()
        if self._pending is not None:
            self._pending.cancel()
        return super().stopService()

    def body(self) -> dict[str, Any]:
        """This second's report."""
        now, counts = self.reactor.seconds(), self.counts()
        times = os.times()
        cpu = times.user + times.system
        rates = {"requests": 0.0, "egress": 0.0, "cpu": 0.0}
        if self._last is not None:
            then, before, cpu_before = self._last
            took = max(now - then, 1e-3)
            rates = {"requests": max(0.0, counts.requests - before.requests) / took,
                     "egress": max(0.0, counts.egress - before.egress) / took,
                     "cpu": max(0.0, cpu - cpu_before) / took}
        self._last = (now, counts, cpu)
        by_address = self.viewers()
        return {"pop": self.pop, "part": self.part, "capacity": self.capacity,
                "viewers": sum(by_address.values()), "networks": networks_of(by_address), **rates}

    def report(self) -> None:
        if self._pending is not None:
            return
        headers: dict[bytes | str, bytes | str] = {}
        if self.secret is not None:
            headers[b"authorization"] = b"Bearer " + self.secret
        body = self.body()
        d = self.http.post(self.url, json=body, headers=headers, timeout=self.interval * 2)
        d.addCallback(self._answered)
        d.addCallback(self._read, body["viewers"])
        d.addCallbacks(self._ok, self._failed)
        d.addBoth(self._done)
        self._pending = d

    def _answered(self, response: Any) -> Deferred[Any]:
        body: Deferred[Any] = response.content()
        if response.code != 200:
            def refused(text: bytes) -> None:
                raise RuntimeError("%d %s" % (response.code, text[:200].decode("utf-8", "replace").strip()))
            body.addCallback(refused)
        return body

    def _read(self, answer: bytes, reported: float) -> None:
        if self.heard is None:
            return
        try:
            parsed = json.loads(answer)
        except ValueError:
            raise RuntimeError("the answer is not JSON: %r" % (answer[:80],)) from None
        self.heard(parsed, reported)

    def _ok(self, _: Any) -> None:
        if self.failing:
            self.log.info("load reports reach the balancer at {url} again", url=self.url)
        self.failing = False

    def _failed(self, failure: Any) -> None:
        if not self.failing:
            self.log.warn("load reports do not reach the balancer at {url}: {why} (retrying each second)",
                          url=self.url, why=failure.getErrorMessage())
        self.failing = True

    def _done(self, _: Any) -> None:
        self._pending = None
