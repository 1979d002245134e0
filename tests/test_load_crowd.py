"""A crowd of simulated viewers against a small live server on loopback: joins, churn, and what they saw."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest_twisted
from twisted.web.resource import Resource
from twisted.web.server import Site

from fbstream.load.crowd import Crowd
from fbstream.load.scenario import Scenario
from fbstream.load.viewer import Settings

MPD = """<?xml version="1.0"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="dynamic" availabilityStartTime="%s"><Period start="PT0S">
<AdaptationSet contentType="video"><SegmentTemplate timescale="1" duration="1" startNumber="1"
 initialization="$RepresentationID$/init.mp4" media="$RepresentationID$/$Number$.m4s" />
<Representation id="low" bandwidth="200000" /><Representation id="high" bandwidth="2000000" /></AdaptationSet>
</Period></MPD>"""


class Live(Resource):
    """Every stream's manifest (started 100 s ago) and segments of their rendition's size, counted."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.asked: Counter[str] = Counter()
        self.origin = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 100))

    def render_GET(self, request: Any) -> bytes:
        parts = request.path.decode().split("/")  # /live/<stream>/...
        self.asked[parts[2]] += 1
        if parts[-1] == "manifest.mpd":
            request.setHeader(b"cache-control", b"public, max-age=1")
            return (MPD % (self.origin,)).encode()
        size = 250_000 if parts[3] == "high" else 25_000
        return b"\0" * (size if parts[-1].endswith(".m4s") else 700)


def the_reactor() -> Any:
    """The reactor pytest-twisted installed (imported here, not when the module is, so as not to install one)."""
    from twisted.internet import reactor

    return reactor


@pytest_twisted.inlineCallbacks
def test_a_crowd_plays_its_scenario_over_many_streams():
    reactor = the_reactor()
    live = Live()
    port = reactor.listenTCP(0, Site(live), interface="127.0.0.1")
    try:
        crowd = Crowd(reactor, "127.0.0.1", port.getHost().port, Settings(startup=2.0), seed=3)
        scenario = Scenario(viewers=30, seconds=6, join_over=1, streams=("a", "b", "c"), zipf=1.0, churn=0.05,
                            startup=2.0)
        summary = yield crowd.run(scenario)
    finally:
        yield port.stopListening()
    assert summary["errors"] == {}, summary
    assert summary["viewers"] > 30  # the churn brought new ones
    assert summary["started"] >= 30 and summary["stalls"] == 0, summary
    assert summary["ttfb_p50"] is not None and summary["latency_p50"] is not None
    assert 5 <= len(crowd.seconds) <= 7 and crowd.seconds[-1]["viewers"] == 30
    assert live.asked["a"] > live.asked["b"] > live.asked["c"] > 0  # Zipf
    assert summary["renditions"].get("high", 0) > 0.5  # loopback is fast: the top, soon
    assert crowd.watching == []  # all gone at the end


class Map(Resource):
    """A balancer's ``/v1/map`` by the client's network: 127.0.<k>.x to ``pops[k]``."""

    isLeaf = True

    def __init__(self, pops: dict[str, str]) -> None:
        super().__init__()
        self.pops = pops

    def render_GET(self, request: Any) -> bytes:
        third = request.getClientAddress().host.split(".")[2]
        return json.dumps({"pops": [{"name": third, "url": self.pops[third]}]}).encode()


class Full(Resource):
    """A full PoP: every request is sent on, 302, to ``to``."""

    isLeaf = True

    def __init__(self, to: str) -> None:
        super().__init__()
        self.to = to

    def render_GET(self, request: Any) -> bytes:
        request.redirect((self.to + request.uri.decode()).encode())
        return b""


class Seen(Live):
    """A PoP that notes the client addresses it serves."""

    def __init__(self) -> None:
        super().__init__()
        self.clients: set[str] = set()

    def render_GET(self, request: Any) -> bytes:
        self.clients.add(request.getClientAddress().host)
        return super().render_GET(request)


@pytest_twisted.inlineCallbacks
def test_viewers_come_from_their_networks_ask_the_map_and_follow_a_full_pop_s_redirect():
    reactor = the_reactor()
    a, b = Seen(), Seen()
    ports = [reactor.listenTCP(0, Site(live), interface="127.0.0.1") for live in (a, b)]
    url = ["http://127.0.0.1:%d" % (p.getHost().port,) for p in ports]
    ports.append(reactor.listenTCP(0, Site(Full(url[1])), interface="127.0.0.1"))
    url.append("http://127.0.0.1:%d" % (ports[2].getHost().port,))
    ports.append(reactor.listenTCP(0, Site(Map({"1": url[0], "2": url[1], "3": url[2]})), interface="127.0.0.1"))
    glb = "http://127.0.0.1:%d" % (ports[3].getHost().port,)
    try:
        crowd = Crowd(reactor, "127.0.0.1", 1, Settings(startup=1.0), glb=glb,
                      sources=["127.0.1.0/24", "127.0.2.0/24", "127.0.3.0/24"])
        summary = yield crowd.run(Scenario(viewers=30, seconds=4, join_over=0.5, startup=1.0))
    finally:
        for port in ports:
            yield port.stopListening()
    assert summary["errors"] == {} and summary["started"] == 30, summary
    hosts = [u.split("//")[1] for u in url]
    assert summary["sent_to"] == {hosts[0]: 10, hosts[1]: 10, hosts[2]: 10}
    assert summary["redirects"] == 10 and summary["map_failures"] == 0
    # Each viewer's own address, one per viewer, from its network.
    assert a.clients == {"127.0.1.%d" % (i,) for i in range(1, 11)}
    assert b.clients == {"127.0.%d.%d" % (net, i) for net in (2, 3) for i in range(1, 11)}


@pytest_twisted.inlineCallbacks
def test_with_no_balancer_answering_viewers_play_from_the_pop_they_were_given():
    reactor = the_reactor()
    live = Live()
    port = reactor.listenTCP(0, Site(live), interface="127.0.0.1")
    pop = "127.0.0.1:%d" % (port.getHost().port,)
    gone = reactor.listenTCP(0, Site(Live()), interface="127.0.0.1")
    glb = "http://127.0.0.1:%d" % (gone.getHost().port,)
    yield gone.stopListening()
    try:
        crowd = Crowd(reactor, "127.0.0.1", port.getHost().port, Settings(startup=1.0), glb=glb)
        summary = yield crowd.run(Scenario(viewers=5, seconds=3, join_over=0.5, startup=1.0))
    finally:
        yield port.stopListening()
    assert summary["errors"] == {} and summary["started"] == 5, summary
    assert summary["map_failures"] == 5
    assert summary["sent_to"] == {pop: 5}


class Silent(Resource):
    """A balancer that takes the request and never answers."""

    isLeaf = True

    def render_GET(self, request: Any) -> Any:
        from twisted.web.server import NOT_DONE_YET

        return NOT_DONE_YET


@pytest_twisted.inlineCallbacks
def test_a_balancer_that_never_answers_costs_a_viewer_its_map_wait_and_no_more():
    reactor = the_reactor()
    live = Live()
    port = reactor.listenTCP(0, Site(live), interface="127.0.0.1")
    pop = "127.0.0.1:%d" % (port.getHost().port,)
    silent = reactor.listenTCP(0, Site(Silent()), interface="127.0.0.1")
    try:
        crowd = Crowd(reactor, "127.0.0.1", port.getHost().port, Settings(startup=1.0),
                      glb="http://127.0.0.1:%d" % (silent.getHost().port,))
        summary = yield crowd.run(Scenario(viewers=3, seconds=4.5, join_over=0.1, startup=1.0))
    finally:
        yield port.stopListening()
        yield silent.stopListening()
    # Each waited 1.5 s for its map, then played from the PoP it was given.
    assert summary["errors"] == {} and summary["started"] == 3 and summary["map_failures"] == 3, summary
    assert summary["watching_at"] == {pop: 3} and live.asked["demo"] > 0
