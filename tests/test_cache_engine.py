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
