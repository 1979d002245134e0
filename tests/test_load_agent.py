"""The load-generating agent's control API, on real sockets, running a crowd against a small live server."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest_twisted
import treq
from twisted.internet import task
from twisted.web.server import Site

from fbstream.load.agent import AgentResource
from fbstream.load.controller import combine, tiers_of
from fbstream.roles.services import http_root

from .test_load_crowd import Live, the_reactor

SECRET = b"a-secret-of-the-agents-0123"


def listen(resource):
    reactor = the_reactor()
    root = http_root()
    root.putChild(b"v1", resource)
    return reactor.listenTCP(0, Site(root), interface="127.0.0.1")


@pytest_twisted.inlineCallbacks
def test_a_run_is_started_watched_and_reported_and_bad_asks_are_refused():
    reactor = the_reactor()
    live_port = reactor.listenTCP(0, Site(Live()), interface="127.0.0.1")
    agent = AgentResource(reactor, "agent0", SECRET, max_viewers=50)
    port = listen(agent)
    url = "http://127.0.0.1:%d/v1/run" % (port.getHost().port,)
    auth: Any = {b"authorization": [b"Bearer " + SECRET]}
    run = {"pop": "http://127.0.0.1:%d" % (live_port.getHost().port,), "share": [0, 2], "seed": 1,
           "scenario": {"viewers": 20, "seconds": 4, "join_over": 0.5, "streams": ["a", "b"]},
           "start_at": reactor.seconds() + 0.5}
    try:
        response = yield treq.get(url)
        assert response.code == 401
        for bad, code in ((b"[]", 400), (b"{", 400), (json.dumps(dict(run, scenario={"viewers": 1000})).encode(), 400),
                          (json.dumps(dict(run, pop="ftp://x")).encode(), 400), (b" " * 300_000, 413),
                          (json.dumps(dict(run, glb="ftp://x")).encode(), 400),
                          (json.dumps(dict(run, glb=5)).encode(), 400),
                          (json.dumps(dict(run, sources=["not a network"])).encode(), 400),
                          (json.dumps(dict(run, sources="10.0.0.0/8")).encode(), 400),
                          (json.dumps(dict(run, sources=["10.0.0.0/24"] * 2000)).encode(), 400)):
            response = yield treq.post(url, data=bad, headers=auth)
            assert response.code == code, (bad[:60], (yield response.text()))
        response = yield treq.post(url, data=json.dumps(run).encode(), headers=auth)
        assert response.code == 202
        response = yield treq.post(url, data=json.dumps(run).encode(), headers=auth)
        assert response.code == 409  # one run at a time
        state = {}
        for _ in range(100):
            yield task.deferLater(reactor, 0.1, lambda: None)
            response = yield treq.get(url, headers=auth)
            state = yield response.json()
            if state["state"] == "done":
                break
        assert state["state"] == "done", state
        summary = state["summary"]
        assert summary["viewers"] == 10 and summary["errors"] == {} and summary["started"] == 10  # its half
        assert len(state["seconds"]) >= 3 and state["histograms"]["ttfb"]
        # The controller adds agents up from their histograms.
        both = combine([state, state])
        assert both["viewers"] == 20 and both["ttfb_p50"] is not None and both["startup_p50"] is not None
        assert both["sent_to"] == {run["pop"][7:]: 20} and both["redirects"] == 0
        response = yield treq.get(url + "?from=2", headers=auth)
        assert len((yield response.json())["seconds"]) == len(state["seconds"]) - 2
    finally:
        yield port.stopListening()
        yield live_port.stopListening()


def test_tiers_and_their_leak_from_two_scrapes() -> None:
    before = {"fbstream_cache_requests_total|pop-cache": 100.0, "fbstream_cache_upstream_fetches_total|pop-cache": 2.0}
    after = {"fbstream_cache_requests_total|pop-cache": 1100.0, "fbstream_cache_upstream_fetches_total|pop-cache": 20.0,
             "fbstream_cache_hits_total|pop-cache": 900.0, "process_cpu_seconds_total|": 3.0}
    tiers = tiers_of(before, after)
    assert math.isnan(tiers["pop-cache"].pop("manifest_leak"))  # no manifest asked for
    assert tiers == {"pop-cache": {"requests": 1000.0, "upstream": 18.0, "hits": 900.0, "leak": 0.018}}


def test_the_leak_is_the_segments_and_manifests_have_their_own() -> None:
    after = {"fbstream_cache_requests_total|pop-proxy": 1000.0, "fbstream_cache_upstream_fetches_total|pop-proxy": 60.0,
             "fbstream_cache_manifest_requests_total|pop-proxy": 200.0,
             "fbstream_cache_manifest_fetches_total|pop-proxy": 50.0}
    figures = tiers_of({}, after)["pop-proxy"]
    assert figures["leak"] == 10 / 800 and figures["manifest_leak"] == 50 / 200
