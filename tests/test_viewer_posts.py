"""
Viewers' posts at the PoP, on a Clock: each checked and limited per viewer,
and a stream's posts passed on together at most once a second.
"""

from __future__ import annotations

import io
import json
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from fbstream.live.posts import Batches, ViewerPosts


class Answer:
    """What the origin answers: 202, its body read by ``readBody``."""

    code = 202

    def deliverBody(self, protocol: Any) -> None:
        protocol.dataReceived(b'{"second": 1}')
        protocol.connectionLost(Failure(ResponseDone()))


class PostsCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000.0)
        self.sent: list[tuple[bytes, dict[str, Any]]] = []

        def poster(path: bytes, body: bytes) -> Deferred[Any]:
            self.sent.append((path, json.loads(body)))
            return succeed(Answer())

        self.posts = ViewerPosts(self.clock, poster)

    def post(self, kind: str, body: Any, address: str = "10.0.0.1", stream: str = "s1") -> Any:
        request: Any = DummyRequest([])
        request.method = b"POST"
        request.path = b"/api/v1/live_videos/%s/%s" % (stream.encode(), kind.encode())
        request.content = io.BytesIO(body if isinstance(body, bytes) else json.dumps(body).encode())
        request.client = type("Address", (), {"host": address})()
        request.getClientAddress = lambda: request.client  # type: ignore[method-assign]
        result = self.posts.render(request)
        assert result is not NOT_DONE_YET
        request.written.append(result)
        return request

    def test_a_stream_s_posts_go_on_together_once_a_second_however_many_post(self) -> None:
        self.assertEqual(self.post("comments", {"text": "first", "name": "a"}).responseCode, 202)
        self.clock.advance(0)
        self.assertEqual(len(self.sent), 1)  # the first after a quiet second goes at once
        for i in range(40):  # 40 viewers, one reaction each, and a comment from some
            self.post("reactions", {"reaction": "like"}, address="10.0.1.%d" % (i,))
            if i % 10 == 0:
                self.post("comments", {"text": "c%d" % (i,)}, address="10.0.1.%d" % (i,))
        self.clock.advance(0.5)
        self.assertEqual(len(self.sent), 1)
        self.clock.advance(0.5)
        self.assertEqual(len(self.sent), 2)
        path, batch = self.sent[1]
        self.assertEqual(path, b"/live/s1/posts")
        self.assertEqual(batch["reactions"], {"like": 40})
        self.assertEqual([c["text"] for c in batch["comments"]], ["c0", "c10", "c20", "c30"])
        self.assertEqual(self.sent[0][1]["comments"], [{"name": "a", "text": "first", "at": 1000.0}])
        self.clock.advance(5)
        self.assertEqual(len(self.sent), 2)  # nothing more to send

    def test_a_viewer_past_its_limit_gets_429_and_bad_posts_a_clear_error(self) -> None:
        codes = [self.post("comments", {"text": "hi"}).responseCode for _ in range(5)]
        self.assertEqual(codes, [202, 202, 202, 429, 429])
        limited = self.post("comments", {"text": "hi"})
        self.assertEqual(limited.responseHeaders.getRawHeaders(b"retry-after"), [b"2"])
        self.assertEqual(self.post("comments", {"text": "hi"}, address="10.0.0.2").responseCode, 202)  # another viewer
        self.assertEqual(self.post("comments", b"x" * 5000, address="10.0.0.3").responseCode, 413)
        self.assertEqual(self.post("comments", {"text": "y" * 501}, address="10.0.0.4").responseCode, 413)
        self.assertEqual(self.post("reactions", {"reaction": "boo"}, address="10.0.0.5").responseCode, 400)
        self.assertEqual(self.post("shares", {}, address="10.0.0.6").responseCode, 404)

    def test_streams_waiting_are_bounded(self) -> None:
        batches = Batches(self.clock, lambda path, body: Deferred(), max_streams=2)
        self.assertTrue(batches.add(b"a", reaction="like"))
        self.assertTrue(batches.add(b"b", reaction="like"))
        self.assertFalse(batches.add(b"c", reaction="like"))
        self.assertTrue(batches.add(b"a", reaction="wow"))  # a stream already waiting still takes posts


class AudienceCase(PostsCase):
    def test_each_stream_s_viewers_go_with_its_batch_once_a_second(self) -> None:
        from fbstream.live.posts import AUDIENCE_WINDOW, Audience

        audience = Audience(self.clock, self.posts.batches, "pop1:42")
        viewers = [object() for _ in range(5)]
        for viewer in viewers:
            for _ in range(3):  # a viewer's many requests count once
                audience.saw(b"s1", viewer)
        audience.saw(b"s2", viewers[0])
        audience.report()
        self.clock.advance(0)
        batches = {path: batch for path, batch in self.sent}
        self.assertEqual(batches[b"/live/s1/posts"]["viewers"], {"pop1:42": 5})
        self.assertEqual(batches[b"/live/s2/posts"]["viewers"], {"pop1:42": 1})
        # Gone quiet past the window: no longer counted, and nothing sent for it.
        self.clock.advance(AUDIENCE_WINDOW + 1)
        audience.saw(b"s1", viewers[0])
        del self.sent[:]
        audience.report()
        self.clock.advance(1)
        self.assertEqual([(path, batch["viewers"]) for path, batch in self.sent], [(b"/live/s1/posts", {"pop1:42": 1})])

    def test_the_streams_counted_are_bounded(self) -> None:
        from fbstream.live.posts import Audience

        audience = Audience(self.clock, self.posts.batches, "pop1:42", max_streams=10)
        for i in range(100):
            audience.saw(b"s%d" % (i,), object())
        self.assertEqual(len(audience.streams), 10)
