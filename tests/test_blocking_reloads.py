"""
LL-HLS blocking playlist reloads at a cache tier whose pushes flow, answered
from the pushed playlist versions, on a Clock: what a version says it
satisfies and that it never says more than ``has_part`` would (a broken
value says nothing); a reload the held version satisfies answered at once,
one it does not waiting for the version that does, or past its bounds
fetched as without pushes; and the whole way from the encoder's video
through the push channel to a PoP's cache layer.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET

from fbstream.cache.engine import CacheSettings, CachingResource
from fbstream.cache.push import CachePushSink
from fbstream.encoder import manifest
from fbstream.encoder.push import EncoderPushSource
from fbstream.encoder.store import LiveVideo
from fbstream.endings import Ending, EndKind
from fbstream.live.blocking import HLS_EDGE_HEADER, PlaylistEdge, edge_of
from fbstream.push.channel import PushClient, PushHub
from fbstream.push.core import ChannelSettings
from tests.test_cache_engine import Streamed, Upstream, Viewer
from tests.test_live_edge import VIDEO, LiveCase, chunk, init
from tests.test_push_channel import Connector

PLAYLIST = b"/live/cam/360p/playlist.m3u8"
PLAYLIST_HEADERS = [(b"content-type", b"application/vnd.apple.mpegurl"), (b"cache-control", b"public, max-age=1"),
                    (b"access-control-allow-origin", b"*")]
BLOCKED = b"public, max-age=2"


def key(msn: int, part: int | None = None) -> bytes:
    if part is None:
        return PLAYLIST + b"?_HLS_msn=%d" % (msn,)
    return PLAYLIST + b"?_HLS_msn=%d&_HLS_part=%d" % (msn, part)


class TheHeader(SynchronousTestCase):
    def test_it_says_the_complete_run_the_growing_segment_and_the_end(self) -> None:
        for edge, value in ((PlaylistEdge(1, 6, 7, 2), b"1-6 7.2"), (PlaylistEdge(4, 4), b"4-4"),
                            (PlaylistEdge(growing=1, parts=1), b"1.1"), (PlaylistEdge(ended=True), b"end")):
            self.assertEqual(edge.header(), value)
            self.assertEqual(PlaylistEdge.parse(value), edge)
        self.assertIsNone(PlaylistEdge().header())
        edge = PlaylistEdge(3, 6, 7, 2)
        self.assertEqual([edge.satisfies(*q) for q in ((3, None), (6, 0), (7, 1), (7, 2), (7, None), (8, 0))],
                         [True, True, True, False, False, False])
        # Waiting for a later version is worth it only for what is past the complete run, and not far.
        self.assertEqual([edge.later(n) for n in (2, 6, 7, 8, 9, 10)], [False, False, True, True, True, False])
        self.assertTrue(PlaylistEdge(ended=True).satisfies(99, 0))

    def test_broken_or_hostile_values_say_nothing(self) -> None:
        for value in (b"", b" ", b"1-6  7.2", b" 1-6", b"1-6 ", b"6-1", b"0-6", b"1-6 2-7", b"7.2 8.1",
                      b"end 1-6", b"1-6 end", b"END", b"1-6 7.2 x", b"-1-6", b"1-6\x00", b"1-6,7.2", b"7.2.1",
                      b"1" * 19 + b"-" + b"2" * 19, b"01-6", b"1-6 7.01", b"1-6\n", b"1-6 7.2\n", b"1-6 " + b" " * 64,
                      b"\xd9\xa1-\xd9\xa6"):  # the last: 1-6 in Arabic-Indic digits, which int() would take
            self.assertIsNone(PlaylistEdge.parse(value), value)
        self.assertIsNone(edge_of([(HLS_EDGE_HEADER, b"1-6"), (HLS_EDGE_HEADER, b"1-7")]))  # two: which?
        self.assertIsNone(edge_of([]))

    @given(st.binary(max_size=80))
    def test_any_bytes_parse_to_nothing_or_to_what_writes_them_back(self, value: bytes) -> None:
        edge = PlaylistEdge.parse(value)
        if edge is not None:
            self.assertEqual(edge.header(), value)

    @given(st.lists(st.sampled_from(b"0123456789-. end"), max_size=24).map(bytes))
    def test_near_misses_parse_to_nothing_or_to_what_writes_them_back(self, value: bytes) -> None:
        edge = PlaylistEdge.parse(value)
        if edge is not None:
            self.assertEqual(edge.header(), value)


class NeverMoreThanHasPart(SynchronousTestCase):
    """The encoder's own header, against what holds a blocking reload there."""

    def setUp(self) -> None:
        self.video = LiveVideo("cam", 0.0, 8.0, None, Clock())
        self.video.add_rendition(VIDEO, init(1000))
        self.checked = 0

    def check(self, exact: bool) -> None:
        """What the version says holds, and (``exact``) all that holds from its first segment on is said."""
        rendition = self.video.renditions["360p"]
        edge = manifest.playlist_edge(self.video, rendition)
        for msn in range(0, 16):
            for part in (None, 0, 1, 2, 3, 4):
                holds = self.video.has_part("360p", msn, part)
                if edge.satisfies(msn, part):
                    self.assertTrue(holds, (edge, msn, part))
                elif exact and msn >= edge.first:
                    self.assertFalse(holds, (edge, msn, part))
                self.checked += 1

    def cut(self, number: int, parts: int, exact: bool = True) -> None:
        for i in range(parts):
            self.video.chunk("360p", number, chunk(8, 33, (number - 1) * 1000 + i * 267))
            self.check(exact)

    def test_through_segments_parts_a_gap_and_a_reconnect(self) -> None:
        self.check(True)
        for n in range(1, 12):  # past the window of 8: the run named is bounded by it
            self.cut(n, 3)
            self.video.segment_end("360p", n, (n - 1) * 1000, 1000)
            self.check(True)
        self.assertEqual(manifest.playlist_edge(self.video, self.video.renditions["360p"]), PlaylistEdge(4, 11))
        self.cut(13, 2)  # 12 never made
        self.video.segment_end("360p", 13, 12000, 1000)
        self.check(True)
        self.cut(14, 2)
        self.video.close_period()  # 14 fails with two parts
        self.check(False)
        self.video.open_period(20.0)
        self.cut(15, 1, exact=False)  # segment 14's parts hold still, unsaid: asked upstream
        self.video.end(Ending(EndKind.PUBLISH_ENDED, "ended"))
        self.assertEqual(manifest.playlist_edge(self.video, self.video.renditions["360p"]), PlaylistEdge(ended=True))
        self.assertGreater(self.checked, 1000)


class AtTheCache(SynchronousTestCase):
    """A PoP cache layer pushed playlist versions by the test."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.upstream = Upstream()
        self.cache = CachingResource("pop-cache", self.upstream, self.clock, CacheSettings())
        self.flowing = {"cam"}
        self.cache.pushing = lambda stream: stream in self.flowing
        self.cache.push_wait = 1.5
        self.cache.manifests_uncached = True
        self.sink = CachePushSink(self.cache)

    def version(self, edge: bytes | None, body: bytes, cache: bytes = b"public, max-age=1") -> None:
        """A version of the playlist pushed here, saying ``edge``."""
        headers = [(n, cache if n == b"cache-control" else v) for n, v in PLAYLIST_HEADERS]
        if edge is not None:
            headers.append((HLS_EDGE_HEADER, edge))
        target = self.sink.pushed("cam", PLAYLIST, 200, headers)
        assert target is not None
        target.data(body)
        target.end()

    def reload(self, msn: int, part: int | None = None) -> Viewer:
        viewer = Viewer(PLAYLIST)
        viewer.addArg(b"_HLS_msn", b"%d" % (msn,))
        if part is not None:
            viewer.addArg(b"_HLS_part", b"%d" % (part,))
        result = self.cache.render(viewer)
        if result is not NOT_DONE_YET:
            viewer.write(result)
            viewer.finish()
        return viewer

    def answer(self, viewer: Viewer) -> tuple[Any, ...]:
        return (viewer.finished, viewer.body(), viewer.header(b"cache-control"), viewer.header(b"x-cache"))

    def test_a_reload_the_held_version_satisfies_is_a_hit_with_a_blocked_answer_s_lifetime(self) -> None:
        self.version(b"1-6 7.2", b"v1")
        hits = self.cache.m_hits._value.get()
        # Pinned here (kept fresh by pushes), the plain playlist is kept by no tier in front...
        plain = Viewer(PLAYLIST)
        self.cache.render(plain)
        self.assertEqual(plain.header(b"cache-control"), b"public, max-age=0")
        # ...but a blocked answer stays true of its part: the encoder's lifetime, not the pin's.
        for msn, part in ((7, 1), (7, 0), (5, None), (6, 3)):
            self.assertEqual(self.answer(self.reload(msn, part)), (1, b"v1", BLOCKED, b"HIT pop-cache"))
        viewer = self.reload(7, 1)
        self.assertEqual((viewer.header(HLS_EDGE_HEADER), viewer.header(b"content-type"), viewer.header(b"age")),
                         (b"1-6 7.2", b"application/vnd.apple.mpegurl", b"0"))
        self.assertEqual(self.cache.m_hits._value.get(), hits + 6)
        self.assertEqual(self.upstream.paths, [])

    def test_one_not_yet_satisfied_waits_for_the_version_that_satisfies_it(self) -> None:
        self.version(b"1-6 7.2", b"v1")
        first, second = self.reload(7, 2), self.reload(7, 2)
        whole = self.reload(7)
        self.clock.advance(0.3)
        self.version(b"1-6 7.2", b"v1 again")  # satisfies none of them
        self.assertEqual([v.finished for v in (first, second, whole)], [0, 0, 0])
        self.version(b"1-6 7.3", b"v2")
        self.assertEqual(self.answer(first), (1, b"v2", BLOCKED, b"MISS pop-cache"))
        self.assertEqual(self.answer(second), (1, b"v2", BLOCKED, b"COALESCED pop-cache"))
        self.assertFalse(whole.finished)
        self.version(b"1-7 8.1", b"v3")
        self.assertEqual(self.answer(whole), (1, b"v3", BLOCKED, b"MISS pop-cache"))
        self.assertEqual(self.answer(self.reload(7, 2)), (1, b"v3", BLOCKED, b"HIT pop-cache"))
        self.clock.advance(5)
        self.assertEqual(self.upstream.paths, [])
        self.assertEqual(self.cache.fetches, {})

    def test_past_the_wait_it_is_fetched_and_a_version_coming_first_still_answers_it(self) -> None:
        self.version(b"1-6 7.2", b"v1")
        viewer = self.reload(7, 3)
        self.clock.advance(1.4)
        self.assertEqual(self.upstream.paths, [])
        self.clock.advance(0.2)
        self.assertEqual(self.upstream.paths, [key(7, 3)])
        self.version(b"1-6 7.4", b"v2")
        self.assertEqual(self.answer(viewer), (1, b"v2", BLOCKED, b"MISS pop-cache"))
        self.assertEqual(self.upstream.cancelled, [key(7, 3)])
        # No version comes (pushes stopped upstream of this tier): upstream answers.
        late = self.reload(8, 0)
        self.clock.advance(1.5)
        self.assertEqual(self.upstream.paths, [key(7, 3), key(8, 0)])
        response = self.upstream.answer(Streamed({b"content-type": [b"application/vnd.apple.mpegurl"],
                                                  b"cache-control": [BLOCKED]}))
        response.send(b"from upstream")
        response.end()
        self.assertEqual(self.answer(late), (1, b"from upstream", BLOCKED, b"MISS pop-cache"))

    def test_where_pushes_do_not_flow_a_reload_is_fetched_at_once_as_before(self) -> None:
        self.version(b"1-6 7.2", b"v1")
        self.flowing.clear()
        self.reload(7, 1)
        self.assertEqual(self.upstream.paths, [key(7, 1)])
        self.cache.pushing = None  # no push channel at all
        self.reload(6)
        self.assertEqual(self.upstream.paths, [key(7, 1), key(6)])

    def test_what_the_held_version_cannot_say_is_fetched_at_once(self) -> None:
        self.version(b"3-6 7.2", b"v1")
        self.reload(2)  # older than the run it names: complete or never made, upstream knows
        self.reload(10)  # far past it: upstream refuses or holds it, as before
        self.reload(9, 0)  # the furthest worth waiting for
        self.assertEqual(self.upstream.paths, [key(2), key(10)])
        self.version(None, b"v2")  # a version that says nothing
        self.reload(7, 1)
        self.assertEqual(self.upstream.paths, [key(2), key(10), key(7, 1)])

    def test_a_broken_header_is_ignored_as_if_there_were_none(self) -> None:
        for value in (b"1-6 7.2 7.3", b"6-1 7.2", b"1-6 7.2" + b" " * 60, b"1-99999999999999999999", b"end 7.2"):
            self.setUp()
            self.version(value, b"v1")
            self.reload(5)
            self.assertEqual(self.upstream.paths, [key(5)], value)

    def test_reloads_waiting_are_bounded_and_one_leaving_frees_its_place(self) -> None:
        self.cache.max_blocked = 2
        self.version(b"1-6 7.2", b"v1")
        waiting = [self.reload(7, 3), self.reload(7, 4), self.reload(7, 4)]  # the last joins its fetch
        self.reload(7, 5)  # one more: fetched at once
        self.assertEqual(self.upstream.paths, [key(7, 5)])
        self.version(b"1-6 7.4", b"v2")
        self.assertTrue(waiting[0].finished)
        self.reload(7, 6)  # its place
        self.assertEqual(self.upstream.paths, [key(7, 5)])
        waiting[1].leave()
        waiting[2].leave()
        self.reload(8, 0)  # the place of the one who left
        self.reload(8, 1)
        self.assertEqual(self.upstream.paths, [key(7, 5), key(8, 1)])
        self.assertEqual(self.upstream.cancelled, [])  # the one who left was never fetched

    def test_one_waiting_is_fetched_the_moment_the_pushes_stop(self) -> None:
        self.version(b"1-6 7.2", b"v1")
        waiting = self.reload(7, 2)
        self.clock.advance(0.3)
        self.assertEqual(self.upstream.paths, [])
        self.flowing.clear()  # the channel is down: no version will come to answer it
        self.sink.stopped("cam")
        self.assertEqual(self.upstream.paths, [key(7, 2)])
        fetched = self.upstream.answer(Streamed({b"content-type": [b"application/vnd.apple.mpegurl"],
                                                 b"cache-control": [BLOCKED]}))
        fetched.send(b"v2")
        fetched.end()
        self.assertEqual(self.answer(waiting), (1, b"v2", BLOCKED, b"MISS pop-cache"))

    def test_once_the_broadcast_is_over_every_reload_gets_the_playlist_as_it_is(self) -> None:
        self.version(b"end", b"ended", cache=b"public, max-age=60")
        self.assertEqual(self.answer(self.reload(99, 0)), (1, b"ended", b"public, max-age=60", b"HIT pop-cache"))
        self.assertEqual(self.upstream.paths, [])


class FromTheEncoder(LiveCase):
    """The encoder's video, pushed over the channel to a PoP's cache layer, which the viewers ask."""

    def setUp(self) -> None:
        super().setUp()
        settings = ChannelSettings()
        self.hub = PushHub("encoder", self.clock, settings, None)
        EncoderPushSource(self.hub, self.registry, self.resource, self.clock)
        self.connector = Connector(self.hub)
        self.upstream = Upstream()
        self.cache = CachingResource("pop-cache", self.upstream, self.clock, CacheSettings())
        client = PushClient("pop-cache", self.clock, self.connector, "test", settings, None, CachePushSink(self.cache))
        client.start()
        self.addCleanup(client.stop)
        self.cache.pushing, self.cache.push_wait, self.cache.manifests_uncached = client.pushing, 1.5, True
        self.client = client

    def reload(self, query: str) -> Viewer:
        viewer = Viewer(PLAYLIST)
        for pair in query.split("&"):
            name, _, value = pair.partition("=")
            viewer.addArg(name.encode(), value.encode())
        self.cache.render(viewer)
        return viewer

    def test_a_reload_is_answered_from_the_push_the_moment_its_part_is_cut(self) -> None:
        for n in (1, 2, 3, 4):
            self.cut("360p", n)
        self.cut("360p", 5, parts=1, complete=False)
        self.client.want("cam")
        self.connector.link.pump()
        at_once = self.reload("_HLS_msn=5&_HLS_part=0")
        self.assertEqual((at_once.finished, at_once.header(b"x-cache")), (1, b"HIT pop-cache"))
        self.assertEqual(at_once.body(), self.get("360p/playlist.m3u8?_HLS_msn=5&_HLS_part=0").body())
        waiting = self.reload("_HLS_msn=5&_HLS_part=1")
        self.clock.advance(0.25)
        self.assertFalse(waiting.finished)
        self.video.chunk("360p", 5, chunk(8, 33, 4000 + 267))
        self.connector.link.pump()
        self.assertTrue(waiting.finished)
        encoder = self.get("360p/playlist.m3u8?_HLS_msn=5&_HLS_part=1")
        self.assertEqual(waiting.body(), encoder.body())
        self.assertIn(b'URI="5.1.m4s"', waiting.body())
        for name in (b"cache-control", b"content-type", HLS_EDGE_HEADER):
            self.assertEqual(waiting.header(name), encoder.header(name), name)
        # The next segment's first part: its end, then its first chunk.
        nxt = self.reload("_HLS_msn=6&_HLS_part=0")
        self.video.segment_end("360p", 5, 4000, 1000)
        self.connector.link.pump()
        self.assertFalse(nxt.finished)
        self.video.chunk("360p", 6, chunk(8, 33, 5000))
        self.connector.link.pump()
        self.assertIn(b'URI="6.0.m4s"', nxt.body())
        self.clock.advance(5)
        self.assertEqual(self.upstream.paths, [])
