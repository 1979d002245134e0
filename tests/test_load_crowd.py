"""A crowd of simulated viewers against a small live server on loopback: joins, churn, and what they saw."""

from __future__ import annotations

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
