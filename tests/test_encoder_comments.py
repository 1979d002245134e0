"""
The encoder's comment track on a Clock: posts from the origin go into their
second, and each second's document is served once it is over (held until
then if asked just before), immutable, JSON.
"""

from __future__ import annotations

import io
import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET

from fbstream.encoder.store import LiveVideo
from fbstream.encoder.web import IMMUTABLE, LiveResource, VideoRegistry
from tests.test_live_edge import Req


class Post(Req):
    def __init__(self, path: str, body: bytes) -> None:
        super().__init__(path)
        self.method = b"POST"
        self.path = b"/live/" + path.encode()
        self.content = io.BytesIO(body)


class CommentsCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_795_470_000.2)
        self.video = LiveVideo("cam", 0.0, 120.0, None, self.clock)
        self.registry = VideoRegistry()
        self.registry.videos["cam"] = self.video
        self.resource = LiveResource(self.registry, None, self.clock, 250)

    def ask(self, request: Req) -> Req:
        result = self.resource.render(request)
        if result != NOT_DONE_YET:
            request.write(result)
            request.finish()
        return request

    def post(self, body: object, stream: str = "cam") -> Req:
        return self.ask(Post("%s/posts" % (stream,), json.dumps(body).encode()))

    def test_a_batch_goes_into_its_second_and_its_document_comes_once_it_is_over(self) -> None:
        answer = self.post({"comments": [{"text": "<b>hi</b>", "name": "ann", "at": 1_795_469_999.9}],
                            "reactions": {"like": 3}})
        self.assertEqual(answer.responseCode, 202)
        second = json.loads(answer.body())["second"]
        self.assertEqual(second, 1_795_470_000)  # the second it arrived in
        self.assertEqual(self.post({"reactions": {"love": 1, "like": 2}}).responseCode, 202)
        # Asked before the second is over: held, then answered as it ends.
        held = self.ask(Req("cam/comments/%d.json" % (second,)))
        self.assertFalse(held.finished)
        self.clock.advance(0.8)
        self.assertTrue(held.finished)
        self.assertEqual(held.header(b"cache-control"), IMMUTABLE)
        self.assertEqual(held.header(b"content-type"), b"application/json")
        doc = json.loads(held.body())
        self.assertEqual(doc["comments"], [{"name": "ann", "text": "<b>hi</b>", "at": 1_795_469_999.9}])
        self.assertEqual(doc["reactions"], {"like": 5, "love": 1})
        self.assertEqual(self.ask(Req("cam/comments/%d.json" % (second,))).body(), held.body())

    def test_too_far_ahead_or_no_longer_kept_is_a_404_and_a_bad_post_a_clear_error(self) -> None:
        now = 1_795_470_000
        self.assertEqual(self.ask(Req("cam/comments/%d.json" % (now + 10,))).responseCode, 404)
        self.assertEqual(self.ask(Req("cam/comments/%d.json" % (now - 100_000,))).responseCode, 404)
        self.assertEqual(self.ask(Req("cam/comments/x.json")).responseCode, 404)
        for bad, code in (({"comments": [{"text": "", "at": 1.0}]}, 400),
                          ({"comments": [{"text": "x" * 600, "at": 1.0}]}, 413),
                          ({"comments": [{"text": "hi"}]}, 400), ({"comments": "hi"}, 400),
                          ({"reactions": {"boo": 1}}, 400), ({"reactions": {"like": -1}}, 400), ([], 400)):
            self.assertEqual(self.post(bad).responseCode, code, bad)
        self.assertEqual(self.ask(Post("cam/posts", b"x" * (2 << 20))).responseCode, 413)
        self.assertEqual(self.post({"reactions": {"like": 1}}, stream="nobody").responseCode, 404)
        self.video.ended = True
        self.assertEqual(self.post({"reactions": {"like": 1}}).responseCode, 409)

    def test_a_viewer_gone_before_the_second_ends_is_forgotten(self) -> None:
        held = self.ask(Req("cam/comments/1795470000.json"))
        held.leave()
        self.clock.advance(1.0)
        self.assertFalse(self.clock.getDelayedCalls())
