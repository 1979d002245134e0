"""
The encoder's comment track on a Clock: posts from the origin go into their
second, and each second's document is served once it is over (held until
then if asked just before), immutable, JSON.
"""

from __future__ import annotations

import io
import json
import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET

from fbstream.encoder.chat import COMMENTS_FILE, Chat, index_of, read_at
from fbstream.encoder.store import Archive, LiveVideo
from fbstream.encoder.web import IMMUTABLE, LiveResource, VideoRegistry
from fbstream.endings import Ending, EndKind
from tests.test_live_edge import Req
from tests.test_record import InlineReactor, StepPool


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


class ReplayCase(SynchronousTestCase):
    """The comments kept for the replay: appended to the archive as each second ends, read back once it has ended."""

    START = 1_795_470_000.0

    def setUp(self) -> None:
        self.reactor = InlineReactor()
        self.reactor.advance(self.START + 0.2)
        self.pool = StepPool()
        self.directory = self.mktemp()
        self.archive = Archive(self.directory, self.pool, self.reactor)
        self.video = LiveVideo("cam", self.START, 120.0, None, self.reactor)
        self.registry = VideoRegistry()
        self.registry.videos["cam"] = self.video
        self.chat = Chat(self.registry, self.archive, self.reactor)
        self.chat.startService()
        self.addCleanup(self.chat.stopService)
        self.resource = LiveResource(self.registry, self.archive, self.reactor, 250, chat=self.chat)

    def ask(self, path: str) -> Req:
        request = Req(path)
        result = self.resource.render(request)
        if result != NOT_DONE_YET:
            request.write(result)
            request.finish()
        return request

    def post(self, body: object) -> None:
        request = Post("cam/posts", json.dumps(body).encode())
        self.resource.render(request)
        self.assertEqual(request.responseCode, 202)

    def tick(self, seconds: float = 1.0) -> None:
        self.reactor.advance(seconds)
        self.pool.run_all()

    def end(self) -> None:
        # The broadcast's ten seconds of media.
        self.video.periods[-1].end_ms = 10_000
        self.video.end(Ending(EndKind.PUBLISH_ENDED, "done"))

    def lines(self) -> list[dict]:
        with open(os.path.join(self.directory, "cam", COMMENTS_FILE), "rb") as f:
            return [json.loads(line) for line in f]

    def test_the_seconds_posted_in_are_appended_as_they_end_and_the_rest_at_the_end(self) -> None:
        s = int(self.START)
        self.post({"comments": [{"text": "first", "name": "ann", "at": self.START + 0.1}]})
        self.tick()  # second s is over: appended
        live = self.ask("cam/comments/%d.json" % (s,)).body()
        self.assertEqual([line["second"] for line in self.lines()], [s])
        self.tick()  # second s + 1: nobody posted, nothing appended
        self.post({"reactions": {"like": 2}})
        self.end()  # second s + 2 is not over, but the video is: appended now
        self.pool.run_all()
        self.assertEqual([(line["second"], line["reactions"]) for line in self.lines()],
                         [(s, {}), (s + 2, {"like": 2})])
        self.assertIsNone(self.chat.kept("cam"))  # the track left memory

        # The replay: the same document as live, an empty one for a second
        # nobody posted in, a 404 outside the video.
        replayed = [self.ask("cam/comments/%d.json" % (n,)) for n in (s, s + 1, s + 2, s + 60)]
        self.pool.run_all()
        self.assertEqual(replayed[0].body(), live)
        self.assertEqual(replayed[0].header(b"cache-control"), IMMUTABLE)
        self.assertEqual(json.loads(replayed[1].body()),
                         {"second": s + 1, "comments": [], "reactions": {}, "dropped": 0})
        self.assertEqual(json.loads(replayed[2].body())["reactions"], {"like": 2})
        self.assertEqual(replayed[3].responseCode, 404)
        self.assertEqual(replayed[3].header(b"cache-control"), b"public, max-age=60")
        self.assertEqual(self.ask("cam/comments/%d.json" % (s - 5,)).responseCode, 404)

    def test_the_index_is_read_once_for_many_requests_and_after_the_end_sees_the_last_second(self) -> None:
        s = int(self.START)
        self.post({"comments": [{"text": "last words", "at": self.START + 0.5}]})
        self.end()
        # Asked at once: the read comes after the end's append on the archive's one thread.
        requests = [self.ask("cam/comments/%d.json" % (s,)) for _ in range(5)]
        self.assertEqual(len(self.pool.jobs), 2)  # the append, then one read of the index
        self.pool.run_all()
        for request in requests:
            self.assertEqual(json.loads(request.body())["comments"][0]["text"], "last words")
        self.assertIn(("cam", self.START), self.chat.replays)

    def test_a_torn_last_line_is_skipped_and_a_restarted_encoder_serves_the_replay(self) -> None:
        s = int(self.START)
        self.post({"reactions": {"wow": 1}})
        self.end()
        self.pool.run_all()
        with open(os.path.join(self.directory, "cam", COMMENTS_FILE), "ab") as f:
            f.write(b'{"second":%d,"comments":[{"na' % (s + 3,))
        # Another process: nothing in memory, the archive alone.
        chat = Chat(self.registry, self.archive, self.reactor)
        resource = LiveResource(self.registry, self.archive, self.reactor, 250, chat=chat)
        requests = []
        for n in (s, s + 3):
            request = Req("cam/comments/%d.json" % (n,))
            self.assertEqual(resource.render(request), NOT_DONE_YET)
            requests.append(request)
        self.pool.run_all()
        self.assertEqual(json.loads(requests[0].body())["reactions"], {"wow": 1})
        self.assertEqual(json.loads(requests[1].body())["comments"], [])

    def test_without_an_archive_an_ended_video_serves_what_it_kept(self) -> None:
        resource = LiveResource(self.registry, None, self.reactor, 250)
        s = int(self.START)
        resource.render(Post("cam/posts", json.dumps({"reactions": {"sad": 1}}).encode()))
        self.end()
        self.reactor.advance(1.0)
        body = resource.render(Req("cam/comments/%d.json" % (s,)))
        assert isinstance(body, bytes)
        self.assertEqual(json.loads(body)["reactions"], {"sad": 1})


def test_the_index_finds_each_second_s_line_and_the_last_of_a_second_wins(tmp_path) -> None:
    path = tmp_path / COMMENTS_FILE
    path.write_bytes(b'{"second":5,"comments":[],"reactions":{"like":1},"dropped":0}\n'
                     b'not a document\n'
                     b'{"second":7,"comments":[],"reactions":{},"dropped":1}\n'
                     b'{"second":5,"comments":[],"reactions":{"like":2},"dropped":0}\n'
                     b'{"second":9,"comm')
    index = index_of(str(path))
    assert sorted(index) == [5, 7]
    assert json.loads(read_at(str(path), *index[5]) or b"")["reactions"] == {"like": 2}
    assert read_at(str(path), 10_000, 5) is None
    assert index_of(str(tmp_path / "none")) == {}
