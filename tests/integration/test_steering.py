"""
Steering in a real player. dash.js in headless Chromium opens the page of
the ``all`` role's PoP (pop1, the nearest by the balancer's seed map) while
pop1 is full, and fetches the live demo's segments from the second PoP
(pop2, its own process on the same origin): by the MPD's DASH Content
Steering, which the balancer answers; and, without it, by the map the page
asks the balancer for (kept for when the balancer is gone).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from .conftest import free_port, run, sleep
from .test_glb import ViewerFactory
from .test_twistd import all_role_process, wait_for_ok
from .topology import Node, origin_pop_args, start_balancer, stop_balancer

SECONDS = 25
#: pop1's capacity: the viewers held open there fill it past its headroom.
CAPACITY = 4


def two_pops(tmp_path):
    """The balancer (started) for pop1, the all role's PoP on a port chosen here, and pop2, a PoP of its own."""
    glb_port, pop1_port = free_port(), free_port()
    pop2 = Node("pop2", "pop", [], str(tmp_path))
    pops = {"pop1": "http://127.0.0.1:%d" % (pop1_port,), "pop2": "http://127.0.0.1:%d" % (pop2.http,)}
    glb = start_balancer(tmp_path, glb_port, pops, '["127.0.0.0/24"]\npop1 = 5.0\npop2 = 20.0\n')
    return glb, "http://127.0.0.1:%d" % (glb_port,), pop1_port, pop2, pops


@defer.inlineCallbacks
def fill(pop1_port, held):
    """Viewers fill pop1 (keep-alive connections, as players hold)."""
    for _ in range(CAPACITY):
        factory = ViewerFactory()
        reactor.connectTCP("127.0.0.1", pop1_port, factory)
        held.append((yield factory.connected))


API_KEY = "steering-test-key"


@defer.inlineCallbacks
def api(base, method, path):
    """A live API call with the key: its status and JSON answer."""
    response = yield Agent(reactor).request(method, (base + path).encode(), Headers(
        {b"authorization": [b"Bearer " + API_KEY.encode()]}))
    return response.code, json.loads((yield readBody(response)))


@defer.inlineCallbacks
def steering(base):
    response = yield Agent(reactor).request(b"GET", (base + "/v1/steering").encode())
    return json.loads((yield readBody(response)))["PATHWAY-PRIORITY"]


@defer.inlineCallbacks
def steered(base, expected, tries=40):
    """
    The steering answer once it is ``expected`` (asked every 0.25 s,
    ``tries`` times at most), else the last one. Each answer places a new
    viewer (it spends what the balancer's plan gave the client's network),
    so the answer that matched is the one judged: asking again to check it
    would place another viewer, who may rightly be sent elsewhere.
    """
    order = None
    for _ in range(tries):
        order = yield steering(base)
        if order == expected:
            break
        yield sleep(0.25)
    return order


@pytest_twisted.inlineCallbacks
def test_dash_js_follows_the_steering_to_the_second_pop_when_the_first_is_full(tmp_path):
    glb, glb_url, pop1_port, pop2, pops = two_pops(tmp_path)
    extra = ("--demo",
             "--set", "encoder.steering.server=%s/v1/steering" % (glb_url,),
             "--set", "encoder.steering.pops=%s" % (json.dumps(["%s=%s" % item for item in pops.items()]),),
             "--set", "pop.glb.url=" + glb_url, "--set", "pop.glb.name=pop1",
             "--set", "pop.glb.capacity=%d" % (CAPACITY,),
             # Only the MPD's steering moves the player here: the page asks
             # the balancer for no map, and pop1 redirects no one.
             "--set", "pop.glb.player_url=off", "--set", "pop.glb.redirect=false")
    held: list[Any] = []
    try:
        with all_role_process(tmp_path, extra=extra, ports={"pop": pop1_port}) as (ports, log):
            pop2.args = origin_pop_args("pop2", ports["origin"], glb_url, 100, player_dir=True)
            pop2.start()
            code = yield wait_for_ok(pops["pop1"] + "/live/demo/manifest.mpd", 40)
            assert code == 200, log.read_text()[-3000:]
            # Both PoPs report; the nearest, pop1, comes first while it has room.
            order = yield steered(glb_url, ["pop1", "pop2"])
            assert order == ["pop1", "pop2"], glb.glb.balancer.state(reactor.seconds())
            yield fill(pop1_port, held)
            order = yield steered(glb_url, ["pop2", "pop1"])
            assert order == ["pop2", "pop1"], glb.glb.balancer.state(reactor.seconds())

            out, err, code = yield run(sys.executable, "-m", "tests.integration.browser",
                                       pops["pop1"] + "/?v=demo", str(SECONDS), timeout=SECONDS + 90)
            assert code == 0, err.decode()[-3000:]
            seen = json.loads(out.decode().strip().splitlines()[-1])
            summary = seen["summary"]
            why = "%s\nloaded from %s\nserver log:\n%s" % (json.dumps(summary), seen["loaded_from"],
                                                            log.read_text()[-2000:])
            print("steered: %s, %s" % (json.dumps(seen["loaded_from"]), json.dumps(
                {k: summary[k] for k in ("stalls", "stalled_seconds", "latency_p50", "failed_count")})))
            assert summary["engine"] == "dash.js", why
            assert summary["failed"] == [] and len(seen["samples"]) >= SECONDS - 2, why
            # The segments came from pop2; pop1 served the page and the MPD.
            assert seen["samples"][-1].get("map") is None, why  # the page asked no balancer
            from_pop2 = seen["loaded_from"].get("127.0.0.1:%d" % (pop2.http,), 0)
            from_pop1 = seen["loaded_from"].get("127.0.0.1:%d" % (pop1_port,), 0)
            assert from_pop2 >= SECONDS and from_pop2 > 5 * from_pop1, why
            assert summary["stalls"] == 0, why
    finally:
        for viewer in held:
            viewer.transport.loseConnection()
        pop2.kill()
        yield defer.maybeDeferred(glb.stopService)


@pytest_twisted.inlineCallbacks
def test_the_page_plays_from_its_map_s_pop_reports_its_round_trips_and_keeps_the_last_map(tmp_path):
    # No steering in the MPD here: the page alone chooses, by its map.
    glb, glb_url, pop1_port, pop2, pops = two_pops(tmp_path)
    glb_port = int(glb_url.rsplit(":", 1)[1])
    extra = ("--demo", "--set", "pop.glb.url=" + glb_url, "--set", "pop.glb.name=pop1",
             "--set", "pop.glb.capacity=%d" % (CAPACITY,))
    env = dict(os.environ, FBSTREAM_BROWSER_STATE=str(tmp_path / "browser-state.json"))
    held: list[Any] = []

    @defer.inlineCallbacks
    def watch(seconds):
        out, err, code = yield run(sys.executable, "-m", "tests.integration.browser", pops["pop1"] + "/?v=demo",
                                   str(seconds), timeout=seconds + 90, env=env)
        assert code == 0, err.decode()[-3000:]
        return json.loads(out.decode().strip().splitlines()[-1])

    try:
        with all_role_process(tmp_path, extra=extra, ports={"pop": pop1_port},
                              env=dict(os.environ, FBSTREAM_API_KEY=API_KEY)) as (ports, log):
            pop2.args = origin_pop_args("pop2", ports["origin"], glb_url, 100)
            pop2.start()
            code = yield wait_for_ok(pops["pop2"] + "/live/demo/manifest.mpd", 40)
            assert code == 200, log.read_text()[-3000:]
            yield fill(pop1_port, held)
            order = yield steered(glb_url, ["pop2", "pop1"])
            assert order == ["pop2", "pop1"], glb.glb.balancer.state(reactor.seconds())

            # The live API at pop1 gives a viewer calling it pop2's playback
            # URLs, by the balancer's map (a broadcaster creating the video
            # is given pop1's own: that places no viewer).
            code, created = yield api(pops["pop1"], b"POST", "/api/v1/live_videos")
            assert code == 201 and created["playback"]["dash"].startswith(pops["pop1"] + "/live/"), created
            code, shown = yield api(pops["pop1"], b"GET", "/api/v1/live_videos/" + created["id"])
            assert code == 200 and shown["playback"]["pop"] == "pop2", shown
            assert shown["playback"]["dash"] == "%s/live/%s/manifest.mpd" % (pops["pop2"], created["id"]), shown
            assert shown["playback"]["hls"] == "%s/live/%s/master.m3u8" % (pops["pop2"], created["id"]), shown

            # The page at pop1 asks the balancer, plays from pop2, and
            # reports its round trips to both.
            seen = yield watch(SECONDS)
            summary = seen["summary"]
            why = "%s\nmap %s\nloaded from %s\nserver log:\n%s" % (
                json.dumps(summary), seen["samples"][-1].get("map"), seen["loaded_from"], log.read_text()[-2000:])
            print("by the map: %s, %s" % (json.dumps(seen["samples"][-1].get("map")), json.dumps(
                {k: summary[k] for k in ("stalls", "stalled_seconds", "latency_p50", "failed_count")})))
            assert summary["failed"] == [] and summary["stalls"] == 0, why
            shown = seen["samples"][-1]["map"]
            assert shown["from"] == "balancer" and shown["playingFrom"] == "pop2" and shown["reported"] == 200, why
            assert set(shown["rtt"]) == {"pop1", "pop2"} and all(0 < ms < 1000 for ms in shown["rtt"].values()), why
            assert seen["loaded_from"].get("127.0.0.1:%d" % (pop2.http,), 0) >= SECONDS, why
            assert "127.0.0.1:%d" % (pop1_port,) not in seen["loaded_from"], why
            measured = glb.glb.balancer.rtts.get("127.0.0.0/24", {})
            assert set(measured) == {"pop1", "pop2"}, glb.glb.balancer.rtts

            # The balancer gone, a viewer coming back plays by its last map,
            # and the live API gives its callers their network's last map.
            yield stop_balancer(glb)
            code, shown = yield api(pops["pop1"], b"GET", "/api/v1/live_videos")
            assert code == 200 and shown["live_videos"][0]["playback"]["pop"] == "pop2", shown
            seen = yield watch(15)
            summary = seen["summary"]
            why = "%s\nmap %s\nloaded from %s" % (json.dumps(summary), seen["samples"][-1].get("map"),
                                                seen["loaded_from"])
            shown = seen["samples"][-1]["map"]
            assert shown["from"] == "last" and shown["playingFrom"] == "pop2", why
            # What failed is the balancer's map and the round trips' report, nothing else.
            assert all("127.0.0.1:%d/" % (glb_port,) in entry for entry in summary["failed"]), why
            assert summary["stalls"] == 0 and seen["loaded_from"].get("127.0.0.1:%d" % (pop2.http,), 0) >= 10, why
    finally:
        for viewer in held:
            viewer.transport.loseConnection()
        pop2.kill()
        if glb.running:
            yield defer.maybeDeferred(glb.stopService)
