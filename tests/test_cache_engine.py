"""
The cache engine on a Clock, its upstream a list of Deferreds the test fires:
what happens when the lock timeout has let a second request through.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from fbstream.cache.engine import CacheSettings, CachingResource

PATH = b"/live/cam/720p/7.m4s"


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


class Viewer(DummyRequest):
    def __init__(self) -> None:
        super().__init__(PATH.split(b"/")[1:])
        self.path = PATH
        self._disconnected = False
        self.producer = None

    def registerProducer(self, producer, streaming) -> None:
        self.producer = producer  # a push producer: nothing to pull

    def unregisterProducer(self) -> None:
        self.producer = None


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

    def age(self, viewer: Viewer) -> list[bytes]:
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
