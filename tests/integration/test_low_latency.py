"""
The live edge through every tier, with a real encoder transcoding a stream
that PyAV publishes: herds of viewers asking, before it exists, for the next
segment or for an LL-HLS blocking playlist reload are held, not refused, and
cost one held request upstream per tier; LL-HLS parts are the segment's
chunks, served and cached like segments.
"""

from __future__ import annotations

import os
import re

import pytest
import pytest_twisted
from twisted.internet import defer

from fbstream.config import load
from fbstream.roles.build import build_role

from .conftest import ROLES_REACTOR, ROOT, free_port, pyav_publish, sleep
from .test_cache import herd
from .test_encoder import get, preload_hint, wait_for_manifest


@pytest.fixture
def viewers_path(encoder):
    """An origin and a PoP (proxy and cache layers) in front of ``encoder``."""
    origin_http, pop_http, pop_cache = free_port(), free_port(), free_port()
    origin = build_role(load("origin", os.path.join(ROOT, "conf", "origin.toml"), [
        "http.listen=tcp:%d:interface=127.0.0.1" % (origin_http,),
        "origin.upstreams=tcp:127.0.0.1:%d" % (encoder.http_port,),
    ])["origin"], ROLES_REACTOR)
    pop = build_role(load("pop", os.path.join(ROOT, "conf", "pop.toml"), [
        "rtmp.listen=tcp:%d:interface=127.0.0.1" % (free_port(),),
        "http.listen=tcp:%d:interface=127.0.0.1:backlog=1024" % (pop_http,),
        # The herds come from one address (loopback): no per-address limit here.
        "http.max_connections_per_address=0",
        # The proxy layer in this process, where the tests look at it.
        "pop.workers=1",
        "pop.cache_listen=tcp:%d:interface=127.0.0.1" % (pop_cache,),
        "pop.cache_hosts=tcp:127.0.0.1:%d" % (pop_cache,),
        "pop.origins=tcp:127.0.0.1:%d" % (origin_http,),
        "relay.dc_proxies=[]",
    ])["pop"], ROLES_REACTOR)
    origin.startService()
    pop.startService()
    tiers = [origin.caches["origin"], pop.caches["pop-cache"], pop.caches["pop-proxy"]]
    yield tiers, "http://127.0.0.1:%d" % (pop_http,)
    pytest_twisted.blockon(defer.maybeDeferred(pop.stopService))
    pytest_twisted.blockon(defer.maybeDeferred(origin.stopService))


def misses(tiers):
    return [t.m_misses._value.get() for t in tiers]


@pytest_twisted.inlineCallbacks
def test_herds_at_the_live_edge_are_held_and_coalesced(encoder, viewers_path):
    tiers, pop = viewers_path
    publishing = pyav_publish(encoder.url("edge"), "--duration", "14", "--size", "640x360")
    yield wait_for_manifest(pop, "edge", timeout=20)
    live = "%s/live/edge" % (pop,)

    # The segment after the newest one started: every viewer is held until
    # it starts, then streamed it as it grows; one request per tier.
    response, playlist = yield get(live + "/360p/playlist.m3u8")
    ahead = preload_hint(playlist)[0] + 1
    before = misses(tiers)
    results = yield herd(pop, b"/live/edge/360p/%d.m4s" % (ahead,), 300)
    assert {code for code, _ in results} == {200}
    bodies = {body for _, body in results}
    assert len(bodies) == 1 and len(bodies.pop()) > 10_000
    assert [b - a for a, b in zip(before, misses(tiers))] == [1, 1, 1]
    # Audio of the same number, asked early too.
    results = yield herd(pop, b"/live/edge/audio/%d.m4s" % (ahead + 1,), 50)
    assert {code for code, _ in results} == {200}

    # An LL-HLS blocking reload for the next part: held until the part
    # exists, and every tier sends one request for all of them.
    response, playlist = yield get(live + "/360p/playlist.m3u8")
    msn, part = preload_hint(playlist)
    query = b"/live/edge/360p/playlist.m3u8?_HLS_msn=%d&_HLS_part=%d" % (msn, part)
    before = misses(tiers)
    results, reordered = yield defer.gatherResults([
        herd(pop, query, 200),
        # The same directives in another order are the same question.
        herd(pop, b"/live/edge/360p/playlist.m3u8?_HLS_part=%d&_HLS_msn=%d" % (part, msn), 20),
    ])
    assert {code for code, _ in results + reordered} == {200}
    assert len({body for _, body in results + reordered}) == 1
    assert b'URI="%d.%d.m4s"' % (msn, part) in results[0][1]
    assert [b - a for a, b in zip(before, misses(tiers))] == [1, 1, 1]

    # Parts are the segment's chunks: together, the whole segment.
    response, playlist = yield get(pop + query.decode())
    complete = [int(n) for n in re.findall(rb"^(\d+)\.m4s$", playlist, re.M)][-1]
    parts = re.findall(rb'URI="%d\.(\d+)\.m4s"' % (complete,), playlist)
    assert len(parts) >= 3, playlist
    pieces = []
    for index in parts:
        response, body = yield get("%s/360p/%d.%s.m4s" % (live, complete, index.decode()))
        assert response.code == 200
        assert response.headers.getRawHeaders(b"cache-control") == [b"public, max-age=31536000, immutable"]
        pieces.append(body)
    response, whole = yield get("%s/360p/%d.m4s" % (live, complete))
    assert b"".join(pieces) == whole

    # Far past the live edge: a quick 404 that no tier keeps.
    response, body = yield get("%s/360p/%d.m4s" % (live, msn + 40))
    assert response.code == 404
    assert response.headers.getRawHeaders(b"cache-control") == [b"no-store"]
    # A flood of distinct far-future numbers: that answer taught every tier
    # where the edge is, and none of these reaches the encoder.
    before = misses(tiers)
    for start in range(0, 2000, 200):
        results = yield defer.gatherResults([get("%s/360p/%d.m4s" % (live, msn + 50 + n))
                                             for n in range(start, start + 200)])
        assert {r.code for r, _ in results} == {404}
    assert [b - a for a, b in zip(before, misses(tiers))] == [0, 0, 0]
    yield publishing
    yield sleep(0)
