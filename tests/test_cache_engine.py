"""
The cache engine on a Clock, its upstream a list of Deferreds the test fires
and bodies it sends a piece at a time: coalescing, a growing body streamed
to viewers who join late, what the lock timeout lets through, upstream
errors and timeouts, lifetimes with ``Age`` counted, the LRU byte bound,
viewers who leave or stop reading, and "not yet" answers for numbers past
the live edge.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IProtocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.server import NOT_DONE_YET

from fbstream.cache.engine import IMMUTABLE, CacheSettings, CachingResource
from tests.web_helpers import Request

PATH = b"/live/cam/720p/7.m4s"
GROWING = {b"content-type": [b"video/mp4"], b"cache-control": [b"no-store"], b"x-fbstream-segment": [b"growing"]}


class Response:
    """What an Agent's response gives the engine: a code, headers, a body."""

    def __init__(self, body: bytes) -> None:
        self.code = 200
        self.headers = Headers({b"content-type": [b"video/mp4"],
                                b"cache-control": [b"public, max-age=31536000, immutable"]})
        self.body = body

    def deliverBody(self, protocol) -> None:
        protocol.makeConnection(None)
        protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))


class Streamed(Response):
    """A response whose body the test sends a piece at a time; it is its body's transport too."""

    def __init__(self, headers: dict, code: int = 200) -> None:
        self.code = code
        self.headers = Headers(headers)
        self.protocol: IProtocol | None = None
        #: Whether the engine stopped reading the body (it was cancelled, or lost).
        self.stopped = False

    def deliverBody(self, protocol) -> None:
        self.protocol = protocol
        protocol.makeConnection(self)

    def stopProducing(self) -> None:
        self.stopped = True

    def send(self, data: bytes) -> None:
        assert self.protocol is not None, "the engine has not asked for the body"
        self.protocol.dataReceived(data)

    def end(self, reason: Exception | None = None) -> None:
        assert self.protocol is not None, "the engine has not asked for the body"
        self.protocol.connectionLost(Failure(reason if reason is not None else ResponseDone()))


_R = TypeVar("_R", bound=Response)


class Upstream:
    """The next tier: every request a Deferred the test answers."""

    def __init__(self) -> None:
        self.requests: list[tuple[bytes, Deferred]] = []
        #: The paths of the requests the engine cancelled.
        self.cancelled: list[bytes] = []

    def __call__(self, path: bytes) -> Deferred:
        d: Deferred = Deferred(lambda _: self.cancelled.append(path))
        self.requests.append((path, d))
        return d

    @property
    def paths(self) -> list[bytes]:
        return [path for path, _ in self.requests]

    def answer(self, response: _R, index: int = -1) -> _R:
        self.requests[index][1].callback(response)
        return response


class Viewer(Request):
    def __init__(self, path: bytes = PATH) -> None:
        super().__init__(path.split(b"/")[1:])
        self.path = path


class EngineCase(SynchronousTestCase):
    """A cache tier whose upstream the test answers."""

    settings = CacheSettings()

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.upstream = Upstream()
        self.cache = CachingResource("pop-cache", self.upstream, self.clock, self.settings)

    def watch(self, path: bytes = PATH, n: int = 1, args: dict | None = None) -> list[Viewer]:
        viewers = [Viewer(path) for _ in range(n)]
        for viewer in viewers:
            for key, value in (args or {}).items():
                viewer.addArg(key, value)
            body = self.cache.render(viewer)
            if body is not NOT_DONE_YET:  # answered at once
                viewer.write(body)
                viewer.finish()
        return viewers

    def get(self, path: bytes = PATH) -> Viewer:
        return self.watch(path)[0]


class SecondAttempt(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.attempts: list[Deferred] = []

        def upstream(path: bytes) -> Deferred:
            d: Deferred = Deferred()
            self.attempts.append(d)
            return d

        self.cache = CachingResource("pop-proxy", upstream, self.clock, CacheSettings(lock_timeout=1.0))

    def watch(self, n: int) -> list[Viewer]:
        viewers = [Viewer() for _ in range(n)]
        for viewer in viewers:
            self.assertEqual(self.cache.render(viewer), NOT_DONE_YET)
        return viewers

    def test_the_first_answer_serves_everyone_and_the_other_is_cancelled(self) -> None:
        viewers = self.watch(3)
        self.assertEqual(len(self.attempts), 1)
        self.clock.advance(1.0)  # no first byte yet: one more request goes
        self.assertEqual(len(self.attempts), 2)
        # The first attempt answers. Cancelling the second fires its errback
        # at once; that must not fail the fetch the first one just won.
        self.attempts[0].callback(Response(b"segment"))
        self.assertTrue(self.attempts[1].called)
        for viewer in viewers:
            self.assertEqual(viewer.responseCode, 200)
            self.assertEqual(b"".join(viewer.written), b"segment")
            self.assertTrue(viewer.finished)
        late = self.watch(1)[0]
        self.assertEqual(late.responseHeaders.getRawHeaders(b"x-cache"), [b"HIT pop-proxy"])

    def test_the_second_answer_may_win(self) -> None:
        viewers = self.watch(2)
        self.clock.advance(1.0)
        self.attempts[1].callback(Response(b"segment"))
        self.assertTrue(self.attempts[0].called)
        self.assertEqual([b"".join(v.written) for v in viewers], [b"segment", b"segment"])


class AgeAcrossTiers(SynchronousTestCase):
    """
    A manifest's lifetime counts from when it left the encoder, at every tier:
    each sends ``Age`` and honours the one it got, so a ``max-age=10`` object
    fetched by the origin 4 s ago lives 6 s more at the PoP, not 10.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.fetches: list[tuple[bytes, bytes | None]] = []
        self.upstream_age: bytes | None = None

        def upstream(path: bytes) -> Deferred:
            response = Response(b"<MPD/>")
            response.headers = Headers({b"content-type": [b"application/dash+xml"],
                                        b"cache-control": [b"public, max-age=10"]})
            if self.upstream_age is not None:
                response.headers.setRawHeaders(b"age", [self.upstream_age])
            self.fetches.append((path, self.upstream_age))
            d: Deferred = Deferred()
            d.callback(response)
            return d

        self.cache = CachingResource("pop-proxy", upstream, self.clock, CacheSettings())

    def get(self) -> Viewer:
        viewer = Viewer()
        self.cache.render(viewer)
        return viewer

    def age(self, viewer: Viewer) -> Sequence[bytes] | None:
        return viewer.responseHeaders.getRawHeaders(b"age")

    def test_age_is_sent_and_grows(self) -> None:
        self.assertEqual(self.age(self.get()), [b"0"])
        self.clock.advance(4)
        hit = self.get()
        self.assertEqual(hit.responseHeaders.getRawHeaders(b"x-cache"), [b"HIT pop-proxy"])
        self.assertEqual(self.age(hit), [b"4"])
        self.clock.advance(6)
        self.assertEqual(self.age(self.get()), [b"0"])  # expired at 10 s: fetched again
        self.assertEqual(len(self.fetches), 2)

    def test_an_upstream_age_shortens_the_lifetime_here(self) -> None:
        self.upstream_age = b"4"
        self.assertEqual(self.age(self.get()), [b"4"])
        self.clock.advance(5.5)
        self.assertEqual(self.age(self.get()), [b"9"])
        self.clock.advance(0.5)  # 4 + 6 = 10 s old: stale here too
        self.get()
        self.assertEqual(len(self.fetches), 2)

    def test_an_object_already_stale_upstream_is_not_stored(self) -> None:
        for hostile in (b"10", b"99999999999999", b"31536000"):
            self.upstream_age = hostile
            self.get()
        self.get()
        self.assertEqual(len(self.fetches), 4)

    def test_a_malformed_age_counts_as_zero(self) -> None:
        for garbage in (b"-5", b"abc", b"1.5", b""):
            self.upstream_age = garbage
            self.clock.advance(11)
            self.assertEqual(self.age(self.get()), [b"0"])


class FarFutureNumbers(SynchronousTestCase):
    """
    A flood of distinct segment numbers past the live edge: the first
    answer from upstream says where the edge is, and the tier answers the
    rest itself, as the encoder would.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.fetched: list[bytes] = []

        def upstream(path: bytes) -> Deferred:
            self.fetched.append(path)
            response = Response(b"not yet\n")
            response.code = 404
            response.headers = Headers({b"content-type": [b"text/plain"], b"cache-control": [b"no-store"],
                                        b"x-fbstream-live-edge": [b"100"]})
            d: Deferred = Deferred()
            d.callback(response)
            return d

        self.cache = CachingResource("pop-proxy", upstream, self.clock, CacheSettings())

    def get(self, path: bytes) -> Viewer:
        viewer = Viewer()
        viewer.path = path
        self.cache.render(viewer)
        return viewer

    def test_numbers_past_the_edge_are_answered_here(self) -> None:
        first = self.get(b"/live/cam/720p/5000.m4s")
        self.assertEqual(first.responseCode, 404)
        for n in range(5001, 10001):
            viewer = self.get(b"/live/cam/720p/%d.m4s" % (n,))
            self.assertEqual(viewer.responseCode, 404)
            self.assertEqual(viewer.responseHeaders.getRawHeaders(b"cache-control"), [b"no-store"])
        self.get(b"/live/cam/audio/7777.3.m4s")  # parts too
        self.assertEqual(self.fetched, [b"/live/cam/720p/5000.m4s"])
        # Near the edge (which moves on a segment a second) still goes upstream.
        self.clock.advance(10)
        self.get(b"/live/cam/720p/113.m4s")
        self.assertEqual(len(self.fetched), 2)
        # Another stream knows nothing yet.
        self.get(b"/live/other/720p/5000.m4s")
        self.assertEqual(len(self.fetched), 3)

    def test_the_streams_remembered_are_bounded(self) -> None:
        from fbstream.cache.engine import MAX_EDGES

        for i in range(MAX_EDGES + 50):
            self.cache.learn_edge(b"/live/s%d/720p/1.m4s" % (i,), [b"1"])
        self.assertEqual(len(self.cache.edges), MAX_EDGES)


class StoreAccounting(SynchronousTestCase):
    def test_a_negative_entry_costs_what_it_holds(self) -> None:
        from fbstream.cache.engine import CachedObject, Store

        store = Store(1_000_000, "test")
        obj = CachedObject(b"/live/cam/720p/notfound.m4s", 404,
                           [(b"content-type", b"text/plain"), (b"cache-control", b"public, max-age=1")])
        obj.chunks, obj.size, obj.expires = [b"no such segment\n"], 16, 1001.0
        store.put(obj, 1000.0)
        self.assertGreater(store.size, 350)

    def test_expired_entries_are_purged_unasked(self) -> None:
        from fbstream.cache.engine import CachedObject, Store

        store = Store(100_000_000, "test")
        for i in range(1000):
            obj = CachedObject(b"/live/cam/720p/x%d.m4s" % (i,), 404, [])
            obj.expires = 1001.0 + i / 1000
            store.put(obj, 1000.0)
        self.assertEqual(len(store), 1000)
        store.purge(1003.0)
        self.assertEqual((len(store), store.size), (0, 0))


class Coalescing(EngineCase):
    def test_many_viewers_make_one_request_and_get_the_same_bytes(self) -> None:
        viewers = self.watch(n=50)
        self.assertEqual(self.upstream.paths, [PATH])
        response = self.upstream.answer(Streamed({b"content-type": [b"video/mp4"], b"cache-control": [IMMUTABLE]}))
        self.assertEqual([v.header(b"x-cache") for v in viewers[:3]],
                         [b"MISS pop-cache", b"COALESCED pop-cache", b"COALESCED pop-cache"])
        response.send(b"moof")
        response.send(b"mdat")
        response.end()
        self.assertEqual({(v.responseCode, v.body(), v.finished) for v in viewers}, {(200, b"moofmdat", 1)})
        hit = self.get()
        self.assertEqual((hit.header(b"x-cache"), hit.header(b"content-length"), hit.body()),
                         (b"HIT pop-cache", b"8", b"moofmdat"))
        self.assertEqual(len(self.upstream.requests), 1)

    def test_blocking_reloads_for_one_part_share_a_request_whatever_their_order(self) -> None:
        playlist = b"/live/cam/720p/playlist.m3u8"
        self.watch(playlist, args={b"_HLS_msn": b"5", b"_HLS_part": b"1"})
        self.watch(playlist, args={b"_HLS_part": b"1", b"_HLS_msn": b"5"})
        self.watch(playlist, args={b"_HLS_msn": b"5"})
        self.watch(playlist)
        self.assertEqual(self.upstream.paths, [playlist + b"?_HLS_msn=5&_HLS_part=1", playlist + b"?_HLS_msn=5",
                                               playlist])

    def test_objects_in_flight_are_bounded(self) -> None:
        self.cache.settings = CacheSettings(max_fetches=2)
        for n in (1, 2):
            self.get(b"/live/cam/720p/%d.m4s" % (n,))
        refused = self.get(b"/live/cam/720p/3.m4s")
        self.assertEqual(refused.responseCode, 503)
        self.assertEqual(len(self.upstream.requests), 2)
        self.get(b"/live/cam/720p/1.m4s")  # joining one in flight is not another
        self.assertEqual(len(self.upstream.requests), 2)


class GrowingBody(EngineCase):
    """A segment the encoder is still making: streamed to every viewer as it grows, kept once complete."""

    def test_late_viewers_get_the_bytes_so_far_then_the_rest(self) -> None:
        first = self.get()
        response = self.upstream.answer(Streamed(GROWING))
        response.send(b"chunk1")
        second = self.get()
        self.assertEqual(second.body(), b"chunk1")
        response.send(b"chunk2")
        third = self.get()
        self.assertEqual(third.written, [b"chunk1", b"chunk2"])
        response.send(b"chunk3")
        self.assertEqual({v.body() for v in (first, second, third)}, {b"chunk1chunk2chunk3"})
        self.assertFalse(any(v.finished for v in (first, second, third)))
        for viewer in (first, second, third):
            self.assertEqual((viewer.header(b"cache-control"), viewer.header(b"x-fbstream-segment")),
                             (b"no-store", b"growing"))
            self.assertIsNone(viewer.header(b"content-length"))
        response.end()
        self.assertTrue(all(v.finished for v in (first, second, third)))
        # Kept as the immutable segment it now is.
        hit = self.get()
        self.assertEqual((hit.header(b"x-cache"), hit.header(b"cache-control"), hit.header(b"x-fbstream-segment")),
                         (b"HIT pop-cache", IMMUTABLE, None))
        self.assertEqual((hit.body(), hit.header(b"content-length")), (b"chunk1chunk2chunk3", b"18"))
        self.assertEqual(len(self.upstream.requests), 1)

    def test_a_body_cut_off_upstream_is_cut_off_for_every_viewer_and_not_kept(self) -> None:
        viewers = self.watch(n=2)
        response = self.upstream.answer(Streamed(GROWING))
        response.send(b"chunk1")
        response.end(ConnectionLost())
        for viewer in viewers:
            self.assertTrue(viewer.aborted)
            self.assertFalse(viewer.finished)
        self.get()
        self.assertEqual(len(self.upstream.requests), 2)


class UpstreamErrors(EngineCase):
    settings = CacheSettings(lock_timeout=8.0, upstream_timeout=10.0)

    def test_a_failed_request_answers_every_viewer_at_once_and_is_not_kept(self) -> None:
        viewers = self.watch(n=3)
        self.upstream.requests[0][1].errback(ConnectionRefusedError())
        for viewer in viewers:
            self.assertEqual((viewer.responseCode, viewer.header(b"cache-control")), (502, b"no-store"))
            self.assertTrue(viewer.finished)
        self.get()
        self.assertEqual(len(self.upstream.requests), 2)
        self.flushLoggedErrors()

    def test_a_silent_upstream_is_a_504_once_both_tries_time_out(self) -> None:
        viewers = self.watch(n=3)
        self.clock.advance(8)
        self.assertEqual(len(self.upstream.requests), 2)  # one more try, never the herd
        self.clock.advance(2)  # the first try times out; the second may still answer
        self.assertFalse(any(v.finished for v in viewers))
        self.clock.advance(8)
        self.assertEqual({(v.responseCode, v.finished) for v in viewers}, {(504, 1)})
        self.assertEqual([d.called for _, d in self.upstream.requests], [True, True])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.upstream.requests), 2)

    def test_a_body_that_stalls_is_cut_off_after_the_timeout(self) -> None:
        viewer = self.get()
        response = self.upstream.answer(Streamed(GROWING))
        response.send(b"chunk1")
        self.clock.advance(9.9)
        response.send(b"chunk2")  # each piece restarts the wait
        self.clock.advance(9.9)
        self.assertFalse(viewer.aborted)
        self.clock.advance(0.2)
        self.assertTrue(viewer.aborted)
        self.assertTrue(response.stopped)
        self.assertEqual(viewer.body(), b"chunk1chunk2")
        self.get()
        self.assertEqual(len(self.upstream.requests), 2)

    def test_an_error_status_from_upstream_is_passed_on_and_not_kept(self) -> None:
        viewers = self.watch(n=2)
        response = self.upstream.answer(Streamed({b"content-type": [b"text/plain"], b"cache-control": [b"no-store"]},
                                                 code=503))
        response.send(b"too many requests waiting\n")
        response.end()
        self.assertEqual({(v.responseCode, v.body()) for v in viewers}, {(503, b"too many requests waiting\n")})
        self.get()
        self.assertEqual(len(self.upstream.requests), 2)


class NegativeEntries(EngineCase):
    """404s: kept for the ``max-age`` they carry, never when they say ``no-store`` ("not yet")."""

    def not_found(self, cache_control: bytes, edge: bytes | None = None) -> Response:
        response = Response(b"segment 7 is not available\n")
        response.code = 404
        response.headers = Headers({b"content-type": [b"text/plain"], b"cache-control": [cache_control]})
        if edge is not None:
            response.headers.setRawHeaders(b"x-fbstream-live-edge", [edge])
        return response

    def test_a_404_is_kept_for_its_max_age_and_no_longer(self) -> None:
        self.get()
        self.upstream.answer(self.not_found(b"public, max-age=1"))
        self.clock.advance(0.9)
        hit = self.get()
        self.assertEqual((hit.responseCode, hit.header(b"x-cache")), (404, b"HIT pop-cache"))
        self.clock.advance(0.1)
        self.get()
        self.assertEqual(len(self.upstream.requests), 2)

    def test_not_yet_is_shared_by_the_viewers_asking_at_once_and_kept_by_none(self) -> None:
        viewers = self.watch(n=5)
        self.upstream.answer(self.not_found(b"no-store", edge=b"5"))
        self.assertEqual({(v.responseCode, v.header(b"cache-control")) for v in viewers}, {(404, b"no-store")})
        self.get()  # the segment may exist a moment later: asked again
        self.assertEqual(len(self.upstream.requests), 2)
        # Its edge (5, and 7 within the margin) is remembered for the numbers far past it.
        far = self.get(b"/live/cam/720p/9.m4s")
        self.assertEqual((far.responseCode, far.header(b"x-fbstream-live-edge")), (404, b"5"))
        self.assertEqual(len(self.upstream.requests), 2)


class Lifetimes(EngineCase):
    def manifest(self, max_age: bytes) -> Response:
        response = Response(b"<MPD/>")
        response.headers = Headers({b"content-type": [b"application/dash+xml"], b"cache-control": [max_age]})
        return response

    def test_an_immutable_segment_stays_with_its_age_counted(self) -> None:
        self.get()
        self.upstream.answer(Response(b"segment"))
        self.clock.advance(86400)
        hit = self.get()
        self.assertEqual((hit.header(b"x-cache"), hit.header(b"age")), (b"HIT pop-cache", b"86400"))

    def test_a_viewer_joining_a_fetch_is_told_its_age_so_far(self) -> None:
        self.get()
        response = self.upstream.answer(Streamed(GROWING))
        response.send(b"chunk1")
        self.clock.advance(2)
        self.assertEqual(self.get().header(b"age"), b"2")

    def test_what_says_no_store_is_never_kept(self) -> None:
        for _ in range(3):
            self.get(b"/live/cam/manifest.mpd")
            self.upstream.answer(self.manifest(b"no-store"))
        self.assertEqual((len(self.upstream.requests), len(self.cache.store)), (3, 0))

    def test_an_expired_object_goes_from_the_store_unasked(self) -> None:
        self.get(b"/live/cam/manifest.mpd")
        self.upstream.answer(self.manifest(b"public, max-age=1"))
        self.assertEqual(len(self.cache.store), 1)
        self.clock.advance(1)
        self.get()
        self.upstream.answer(Response(b"segment"))
        self.assertEqual(len(self.cache.store), 1)  # the segment; the manifest is gone
        self.get(b"/live/cam/manifest.mpd")
        self.assertEqual(len(self.upstream.requests), 3)

    def test_a_pop_keeps_one_copy_of_a_manifest_in_its_cache_layer(self) -> None:
        """
        The PoP's proxy layers (a worker process each) are told to keep no
        manifest, pushed or not: each holding its own version for its
        max-age, a viewer going from one to another would see it go back.
        """
        self.cache.manifests_uncached = True
        for path in (b"/live/cam/manifest.mpd", b"/live/cam/720p/playlist.m3u8"):
            self.get(path)
            self.upstream.answer(self.manifest(b"public, max-age=1"))
            hit = self.get(path)
            self.assertEqual((hit.header(b"x-cache"), hit.header(b"cache-control")),
                             (b"HIT pop-cache", b"public, max-age=0"))  # kept here, not in front
        # Nor a manifest's 404 ("the stream is starting"): a worker must not
        # keep saying so once another has the stream.
        self.get(b"/live/new/manifest.mpd")
        starting = Response(b"the stream is starting")
        starting.code = 404
        starting.headers.setRawHeaders(b"cache-control", [b"public, max-age=1"])
        self.upstream.answer(starting)
        refused = self.get(b"/live/new/manifest.mpd")
        self.assertEqual((refused.responseCode, refused.header(b"x-cache"), refused.header(b"cache-control")),
                         (404, b"HIT pop-cache", b"public, max-age=0"))
        self.get()
        self.upstream.answer(Response(b"segment"))
        self.assertEqual(self.get().header(b"cache-control"), IMMUTABLE)


class ByteBound(EngineCase):
    """The store is an LRU bounded in bytes: here, room for four 2,000-byte segments."""

    settings = CacheSettings(max_bytes=10_000)

    def fetch(self, n: int, size: int = 2000) -> Viewer:
        viewer = self.get(b"/live/cam/720p/%d.m4s" % (n,))
        if viewer.header(b"x-cache") != b"HIT pop-cache":
            self.upstream.answer(Response(b"x" * size))
        return viewer

    def test_the_least_recently_used_goes_first(self) -> None:
        for n in (1, 2, 3, 4):
            self.fetch(n)
        self.assertEqual(len(self.cache.store), 4)
        self.assertEqual(self.fetch(1).header(b"x-cache"), b"HIT pop-cache")  # 2 is now the least recent
        self.fetch(5)
        self.assertLessEqual(self.cache.store.size, 10_000)
        self.assertEqual([self.fetch(n).header(b"x-cache") for n in (1, 3, 4, 5)], [b"HIT pop-cache"] * 4)
        self.assertEqual(self.fetch(2).header(b"x-cache"), b"MISS pop-cache")

    def test_an_object_larger_than_a_quarter_of_the_store_is_served_not_kept(self) -> None:
        for n in (1, 2, 3):
            self.fetch(n)
        big = self.fetch(9, size=3000)
        self.assertEqual((big.responseCode, len(big.body())), (200, 3000))
        self.assertEqual(len(self.cache.store), 3)  # and it pushed nothing out
        self.assertEqual(self.fetch(9, size=3000).header(b"x-cache"), b"MISS pop-cache")


class Leaving(EngineCase):
    """A viewer who leaves cancels nothing others need; the last to leave cancels the fetch."""

    def test_viewers_leaving_mid_body_leave_the_others_theirs(self) -> None:
        viewers = self.watch(n=3)
        response = self.upstream.answer(Streamed(GROWING))
        response.send(b"chunk1")
        viewers[0].leave()
        viewers[1].leave()
        response.send(b"chunk2")
        response.end()
        self.assertFalse(response.stopped)
        self.assertEqual([v.body() for v in viewers], [b"chunk1", b"chunk1", b"chunk1chunk2"])
        self.assertTrue(viewers[2].finished)
        self.assertEqual(self.get().header(b"x-cache"), b"HIT pop-cache")

    def test_the_last_to_leave_before_an_answer_cancels_the_request(self) -> None:
        viewers = self.watch(n=2)
        viewers[0].leave()
        self.assertEqual(self.upstream.cancelled, [])
        viewers[1].leave()
        self.assertEqual(self.upstream.cancelled, [PATH])
        self.assertEqual(self.cache.fetches, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.get()
        self.assertEqual(len(self.upstream.requests), 2)

    def test_the_last_to_leave_mid_body_stops_it(self) -> None:
        viewers = self.watch(n=2)
        response = self.upstream.answer(Streamed(GROWING))
        response.send(b"chunk1")
        for viewer in viewers:
            viewer.leave()
        self.assertTrue(response.stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.get()
        self.assertEqual(len(self.upstream.requests), 2)

    def test_a_viewer_who_stops_reading_is_dropped_and_the_others_carry_on(self) -> None:
        slow, other = self.watch(n=2)
        response = self.upstream.answer(Streamed(GROWING))
        response.send(b"chunk1")
        slow.producer.pauseProducing()
        response.send(b"chunk2")
        self.assertEqual((slow.body(), other.body()), (b"chunk1", b"chunk1chunk2"))
        slow.producer.resumeProducing()  # a moment's pause costs nothing
        self.assertEqual(slow.body(), b"chunk1chunk2")
        slow.producer.pauseProducing()
        for n in range(3, 9):  # the encoder's chunks go on coming
            self.clock.advance(self.settings.stall_timeout / 6)
            response.send(b"chunk%d" % (n,))
        self.assertTrue(slow.aborted)
        response.end()
        self.assertEqual(slow.body(), b"chunk1chunk2")
        self.assertEqual(other.body(), b"".join(b"chunk%d" % (n,) for n in range(1, 9)))
        self.assertTrue(other.finished)

    def test_the_last_viewer_dropped_for_not_reading_stops_the_fetch(self) -> None:
        # Dropped is gone: the last viewer dropped leaves as one who hung up.
        slow = self.get()
        response = self.upstream.answer(Streamed(GROWING))
        response.send(b"chunk1")
        slow.producer.pauseProducing()
        for n in range(2, 8):
            self.clock.advance(self.settings.stall_timeout / 6)
            response.send(b"chunk%d" % (n,))
        self.assertTrue(slow.aborted)
        self.assertTrue(response.stopped)
        self.assertEqual(self.cache.fetches, {})
