"""
A crowd of simulated viewers (:mod:`fbstream.load.viewer`) in one process,
each on its own kept-alive connection (:mod:`fbstream.load.client`), joining
and leaving on a schedule; and what they saw, second by second and in all.

Every second the crowd plays each viewer's buffer up to the present,
counts who is playing and who is stalled, closes that second's histograms
(time to first byte, live latency), and measures its own CPU: past 90 % of a
core the figures are the load generator's, not the server's, and it says so.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import random
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from fbstream.load.client import Answer, Channel
from fbstream.load.scenario import Scenario
from fbstream.load.viewer import MANIFEST, Request, Settings, Viewer

#: The crowd's own CPU share past which its figures are not the server's.
SATURATED = 0.9
#: Seconds between the scenario's steps (joins, leaves, churn).
STEP = 0.1
#: Distinct URLs a crowd remembers having asked for (to tell how many fetches
#: one object cost each tier); past this it stops counting.
MAX_PATHS = 200_000
#: Client networks whose last map a crowd keeps, and PoPs it counts viewers of.
MAX_MAPS = 10_000
MAX_POPS = 1_000
#: Seconds a viewer waits for the balancer's map (then plays by its network's last one), as the page does.
MAP_TIMEOUT = 1.5


def network_key(address: str | None) -> str:
    """The client network of ``address`` (its /24, its /48 for IPv6) that a map is kept for."""
    if not address:
        return ""
    if ":" in address:
        return str(ipaddress.ip_network(address + "/48", strict=False))
    return address.rpartition(".")[0]


def first_pop(body: bytes) -> tuple[str, int] | None:
    """The first PoP of a ``/v1/map`` answer, as (host, port); None if it names no http:// PoP."""
    try:
        url = urlsplit(json.loads(body)["pops"][0]["url"])
        if url.scheme == "http" and url.hostname:
            return url.hostname, url.port or 80
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        pass
    return None


class Histogram:
    """Counts in buckets 5 % wide (from 0.1 ms): percentiles to within 5 %, in constant memory."""

    RATIO = math.log(1.05)
    FLOOR = 1e-4

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.n = 0

    def add(self, value: float) -> None:
        index = int(math.log(max(value, self.FLOOR) / self.FLOOR) / self.RATIO)
        self.counts[index] = self.counts.get(index, 0) + 1
        self.n += 1

    def merge(self, other: Histogram) -> None:
        for index, count in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + count
        self.n += other.n

    def quantile(self, q: float) -> float | None:
        if not self.n:
            return None
        rank, seen = q * self.n, 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return self.FLOOR * math.exp((index + 0.5) * self.RATIO)
        return None


class Sources:
    """
    The client addresses viewers come from (each a network of its own to a
    global load balancer): the networks in turn, and each one's hosts in
    turn. With none, the system picks.
    """

    def __init__(self, networks: Sequence[str] = ()) -> None:
        try:
            self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]
        except ValueError as e:
            raise ValueError("sources: %s" % (e,)) from None
        self.count = 0

    def pick(self) -> str | None:
        if not self.networks:
            return None
        k, self.count = self.count, self.count + 1
        network = self.networks[k % len(self.networks)]
        size = network.num_addresses
        # Not the network's own address nor its broadcast, where it has them.
        hosts, first = (size - 2, 1) if size > 2 else (size, 0)
        return str(network[first + (k // len(self.networks)) % hosts])


class _Watcher:
    """One viewer, its connection and its timer."""

    __slots__ = ("arrived", "asking", "channel", "crowd", "request", "source", "timer", "viewer", "waiting")

    def __init__(self, crowd: Crowd, viewer: Viewer, source: str | None) -> None:
        self.crowd = crowd
        self.viewer = viewer
        self.source = source
        self.channel = Channel(crowd.reactor, crowd.host, crowd.port, self._answered, source)
        #: The balancer's map being asked for, first, and how long it may take.
        self.asking: Channel | None = None
        self.waiting: IDelayedCall | None = None
        #: Whether the PoP has answered it yet (after any redirect).
        self.arrived = False
        self.request: Request | None = None
        self.timer: IDelayedCall | None = None

    def start(self) -> None:
        if self.crowd.glb is None:
            self._play()
            return
        host, port = self.crowd.glb
        self.asking = Channel(self.crowd.reactor, host, port, self._mapped, self.source)
        self.waiting = self.crowd.reactor.callLater(MAP_TIMEOUT, self._mapped, None)
        self.asking.get("/v1/map", keep=True)

    def _mapped(self, answer: Answer | None) -> None:
        """
        The balancer's map (None: none in :data:`MAP_TIMEOUT` seconds): its
        first PoP; else the last map of this network; else the crowd's PoP.
        """
        asking, self.asking = self.asking, None
        if asking is None:
            return  # stopped meanwhile
        if self.waiting is not None and self.waiting.active():
            self.waiting.cancel()
        self.waiting = None
        asking.close()
        network = network_key(self.source)
        pop = None
        if answer is not None and answer.status == 200 and answer.body is not None:
            pop = first_pop(answer.body)
        if pop is None:
            self.crowd.map_failures += 1
            pop = self.crowd.last_maps.get(network)
        elif len(self.crowd.last_maps) < MAX_MAPS or network in self.crowd.last_maps:
            self.crowd.last_maps[network] = pop
        if pop is not None:
            self.channel.host, self.channel.port = pop
        self._play()

    def _play(self) -> None:
        key = "%s:%d" % (self.channel.host, self.channel.port)
        if key in self.crowd.sent or len(self.crowd.sent) < MAX_POPS:
            self.crowd.sent[key] = self.crowd.sent.get(key, 0) + 1
        self._act(self.viewer.start(self.crowd.reactor.seconds()))

    def stop(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.request = None
        if self.asking is not None:
            self.asking.close()
            self.asking = None
        if self.waiting is not None and self.waiting.active():
            self.waiting.cancel()
        self.waiting = None
        self.channel.close()
        self.crowd.redirects += self.channel.redirects

    def _act(self, action: Request | float) -> None:
        if isinstance(action, Request):
            self.request = action
            self.crowd.requests += 1
            if len(self.crowd.paths) < MAX_PATHS:
                self.crowd.paths.add(action.path)
            self.channel.get(action.path, keep=action.kind == MANIFEST)
        elif action != float("inf"):
            self.timer = self.crowd.reactor.callLater(max(0.0, action - self.crowd.reactor.seconds()), self._wake)

    def _wake(self) -> None:
        self.timer = None
        self._act(self.viewer.next(self.crowd.reactor.seconds()))

    def _answered(self, answer: Answer | None) -> None:
        request, self.request = self.request, None
        if request is None:
            return  # stopped meanwhile
        self.arrived = True
        now = self.crowd.reactor.seconds()
        if answer is None:
            self._act(self.viewer.failed(now, request))
        else:
            self.crowd.bytes += answer.size
            self._act(self.viewer.answered(now, request, answer.status, answer.size, answer.seconds, answer.ttfb,
                                           answer.body, answer.max_age))


class Crowd:
    log = Logger()

    def __init__(self, reactor: Any, host: str, port: int, settings: Settings | None = None, seed: int = 0,
                 manifest: str = "/live/{stream}/manifest.mpd", glb: str | None = None,
                 sources: Sequence[str] = ()) -> None:
        """
        Viewers play from the PoP at ``host:port``; with ``glb`` (a global
        load balancer's ``http://`` URL) each first asks it for its map and
        plays from the map's first PoP instead. ``sources``: the client
        networks viewers come from (:class:`Sources`).
        """
        self.reactor = reactor
        self.host = host
        self.port = port
        self.glb: tuple[str, int] | None = None
        if glb is not None:
            url = urlsplit(glb)
            if url.scheme != "http" or not url.hostname:
                raise ValueError("glb: an http:// URL")
            self.glb = (url.hostname, url.port or 80)
        self.sources = Sources(sources)
        #: Each network's last map (its first PoP), for when the balancer does not answer.
        self.last_maps: dict[str, tuple[str, int]] = {}
        self.map_failures = 0
        #: Viewers sent to each PoP ("host:port") at first, and redirects followed.
        self.sent: dict[str, int] = {}
        self.redirects = 0
        self.manifest = manifest
        self.settings = settings or Settings()
        self.rng = random.Random(seed)
        self.watching: list[_Watcher] = []
        #: The figures of the viewers who left, added up.
        self.gone = Totals()
        self.requests = 0
        self.bytes = 0
        self.paths: set[str] = set()
        self.began = reactor.seconds()
        #: This second's histograms, and the whole run's.
        self.second = {"ttfb": Histogram(), "latency": Histogram()}
        self.total = {"ttfb": Histogram(), "latency": Histogram()}
        #: One line per second: what the crowd saw in it.
        self.seconds: list[dict[str, Any]] = []
        self.saturated = 0
        self._cpu = sum(os.times()[:2])
        self._requests = 0
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = reactor
        self._stepper: LoopingCall | None = None
        self.done: Deferred[dict[str, Any]] | None = None
        self.scenario: Scenario | None = None

    def start(self) -> None:
        self.began = self.reactor.seconds()
        self._ticker.start(1.0, now=False)

    def stop(self) -> None:
        for looping in (self._ticker, self._stepper):
            if looping is not None and looping.running:
                looping.stop()
        self.leave(len(self.watching))

    def join(self, n: int, stream: str) -> None:
        base, _, name = self.manifest.format(stream=stream).rpartition("/")
        for _ in range(n):
            watcher = _Watcher(self, Viewer(base + "/", name, self.settings, random.Random(self.rng.random()),
                                            self._observe), self.sources.pick())
            self.watching.append(watcher)
            watcher.start()

    def leave(self, n: int) -> None:
        for _ in range(min(n, len(self.watching))):
            watcher = self.watching.pop(self.rng.randrange(len(self.watching)))
            watcher.stop()
            watcher.viewer.leave(self.reactor.seconds())
            self.gone.add(watcher.viewer, self.reactor.seconds())

    def _observe(self, kind: str, value: float) -> None:
        name = "latency" if kind == "latency" else "ttfb"
        self.second[name].add(value)

    def _tick(self) -> None:
        now = self.reactor.seconds()
        playing = stalled = starting = 0
        for watcher in self.watching:
            viewer = watcher.viewer
            viewer.update(now)
            if viewer.playing:
                playing += 1
            elif viewer.figures.startup is None:
                starting += 1
            else:
                stalled += 1
        cpu = sum(os.times()[:2])
        share, self._cpu = cpu - self._cpu, cpu
        if share >= SATURATED:
            self.saturated += 1
            self.log.warn("the load generator used {share:.0%} of a core in the last second: from here on its "
                          "figures measure it, not the server", share=share)
        line = {
            "t": round(now - self.began, 1), "viewers": len(self.watching), "playing": playing, "stalled": stalled,
            "starting": starting, "requests": self.requests - self._requests, "cpu": round(share, 3),
        }
        self._requests = self.requests
        for name, histogram in self.second.items():
            for q in (0.5, 0.9, 0.99):
                value = histogram.quantile(q)
                line["%s_p%d" % (name, round(q * 100))] = round(value, 4) if value is not None else None
            self.total[name].merge(histogram)
        self.second = {"ttfb": Histogram(), "latency": Histogram()}
        self.seconds.append(line)

    def run(self, scenario: Scenario) -> Deferred[dict[str, Any]]:
        """
        Play ``scenario`` from now: its viewers joining, churning and leaving
        as it says; the summary once it is over (:meth:`stop` ends it early).
        """
        self.scenario = scenario
        pick = scenario.picker(self.rng)
        done: Deferred[dict[str, Any]] = Deferred()
        self.done = done
        churned = 0.0

        def step() -> None:
            nonlocal churned
            t = self.reactor.seconds() - self.began
            if t >= scenario.seconds:
                self.finish()
                return
            wanted = scenario.wanted(t)
            if wanted > len(self.watching):
                for _ in range(wanted - len(self.watching)):
                    self.join(1, pick())
            elif wanted < len(self.watching):
                self.leave(len(self.watching) - wanted)
            churned += scenario.churn * len(self.watching) * STEP
            if churned >= 1:
                n = int(churned)
                churned -= n
                self.leave(n)
                for _ in range(n):
                    self.join(1, pick())

        self._stepper = LoopingCall(step)
        self._stepper.clock = self.reactor
        self.start()
        self._stepper.start(STEP, now=True)
        return done

    def finish(self) -> None:
        """End the run now: every viewer leaves, and the summary is handed on."""
        summary = self.summary()
        self.stop()
        if self.done is not None and not self.done.called:
            self.done.callback(summary)

    def watching_at(self) -> dict[str, int]:
        """Viewers watching now at each PoP ("host:port"): those it has answered (after any redirect)."""
        at: dict[str, int] = {}
        for watcher in self.watching:
            if not watcher.arrived:
                continue
            key = "%s:%d" % (watcher.channel.host, watcher.channel.port)
            at[key] = at.get(key, 0) + 1
        return dict(sorted(at.items()))

    def totals(self, now: float) -> Totals:
        """Every viewer's figures, those watching and those who left, added up."""
        totals = self.gone.copy()
        for watcher in self.watching:
            watcher.viewer.update(now)
            totals.add(watcher.viewer, now)
        return totals

    def startups(self) -> Histogram:
        return self.totals(self.reactor.seconds()).startups

    def summary(self) -> dict[str, Any]:
        """The whole run: every viewer's figures added up, and the run's percentiles."""
        now = self.reactor.seconds()
        totals = self.totals(now)

        def q(histogram: Histogram, p: float) -> float | None:
            value = histogram.quantile(p)
            return round(value, 4) if value is not None else None

        stalled, played = totals.stalled, totals.played
        return {
            "viewers": totals.viewers,
            "seconds": round(now - self.began, 1),
            "requests": totals.requests,
            "bytes": self.bytes,
            "errors": totals.errors,
            "started": totals.startups.n,
            "startup_p50": q(totals.startups, 0.5), "startup_p90": q(totals.startups, 0.9),
            "stalls": totals.stalls,
            "stalled_seconds": round(stalled, 2),
            "played_seconds": round(played, 2),
            "rebuffer_ratio": round(stalled / (played + stalled), 5) if played + stalled else None,
            "ttfb_p50": q(self.total["ttfb"], 0.5), "ttfb_p99": q(self.total["ttfb"], 0.99),
            "latency_p50": q(self.total["latency"], 0.5), "latency_p95": q(self.total["latency"], 0.95),
            "renditions": {name: round(t / played, 3) for name, t in sorted(totals.renditions.items())}
            if played else {},
            "cpu_saturated_seconds": self.saturated,
            "sent_to": dict(sorted(self.sent.items())),
            "watching_at": self.watching_at(),
            "redirects": self.redirects + sum(w.channel.redirects for w in self.watching),
            "map_failures": self.map_failures,
            "distinct_paths": len(self.paths) if len(self.paths) < MAX_PATHS else None,
        }


class Totals:
    """Viewers' figures added up: those who left are kept this way, not one by one."""

    def __init__(self) -> None:
        self.viewers = self.requests = self.stalls = 0
        self.stalled = self.played = 0.0
        self.errors: dict[str, int] = {}
        self.renditions: dict[str, float] = {}
        self.startups = Histogram()

    def add(self, viewer: Viewer, now: float) -> None:
        figures = viewer.figures
        self.viewers += 1
        self.requests += figures.requests
        self.stalls += figures.stalls
        self.stalled += figures.stalled + viewer.stalled_now(now)
        self.played += figures.played
        for what, n in figures.errors.items():
            self.errors[what] = self.errors.get(what, 0) + n
        for name, seconds in figures.renditions.items():
            self.renditions[name] = self.renditions.get(name, 0.0) + seconds
        if figures.startup is not None:
            self.startups.add(figures.startup)

    def copy(self) -> Totals:
        other = Totals()
        other.viewers, other.requests, other.stalls = self.viewers, self.requests, self.stalls
        other.stalled, other.played = self.stalled, self.played
        other.errors, other.renditions = dict(self.errors), dict(self.renditions)
        other.startups.merge(self.startups)
        return other
