"""
The live API (``/api/v1/live_videos``) on a Clock over the embedded
registry: creating, showing, listing and ending live videos as a caller
holding the API key does, what it refuses and how, and what it answers when
the registry cannot be reached or fails, what hostile callers holding the
key get (bodies nested thousands deep, bad pages, too many creations).
Browser sessions are in ``tests/test_login.py``.
"""

from __future__ import annotations

import io
import json
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.test.requesthelper import DummyChannel

from fbstream.live.api import MAX_BODY, APISettings, LiveVideosResource
from fbstream.live.tokens import KeyRing
from fbstream.registry.base import RegistryUnavailable
from fbstream.registry.memory import MemoryRegistry
from fbstream.registry.records import VideoRecord, VideoStatus
from tests.test_records import state
from tests.web_helpers import APIRequest, answer

KEY = b"the api key"
TTL = 3600


class APICase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.registry = MemoryRegistry(self.clock, 10)
        self.keys = KeyRing.generate()
        self.api = LiveVideosResource(self.registry, self.keys, self.settings(), self.clock)

    def settings(self) -> APISettings:
        return APISettings(KEY.decode(), "dc1", TTL, "rtmp://pop.example:1935/live",
                           "rtmps://pop.example:443/live", "https://pop.example")

    def request(self, method: bytes, path: str = "", body: bytes = b"", key: bytes | None = KEY,
                args: dict[bytes, bytes] | None = None) -> APIRequest:
        request = APIRequest(method, body=body, page=False)
        request.postpath = [p.encode() for p in path.split("/")] if path else []
        if key is not None:
            request.requestHeaders.setRawHeaders(b"authorization", [b"Bearer " + key])
        for name, value in (args or {}).items():
            request.addArg(name, value)
        return request

    def call(self, method: bytes, path: str = "", body: bytes = b"", key: bytes | None = KEY,
             args: dict[bytes, bytes] | None = None) -> tuple[int, Any]:
        return answer(self.api, self.request(method, path, body, key, args))

    def create(self, title: str = "t") -> dict[str, Any]:
        status, body = self.call(b"POST", body=json.dumps({"title": title}).encode())
        self.assertEqual(status, 201, body)
        return body


class Create(APICase):
    def test_a_new_video_has_a_token_for_its_stream_and_where_to_send_and_watch_it(self) -> None:
        request = self.request(b"POST", body=b'{"title": "my show"}')
        status, body = answer(self.api, request)
        self.assertEqual(status, 201)
        vid = body["id"]
        self.assertEqual(request.responseHeaders.getRawHeaders(b"location"), [b"/api/v1/live_videos/" + vid.encode()])
        self.assertEqual(request.responseHeaders.getRawHeaders(b"cache-control"), [b"no-store"])
        self.assertEqual((body["status"], body["title"], body["datacenter"]), ("created", "my show", "dc1"))
        claims = self.keys.verify(body["token"], vid, self.clock.seconds())
        self.assertEqual((claims.datacenter, claims.expires), ("dc1", self.clock.seconds() + TTL))
        self.assertEqual(body["token_expires"], self.clock.seconds() + TTL)
        self.assertEqual(body["stream_key"], "%s?token=%s" % (vid, body["token"]))
        self.assertEqual(body["ingest"], {
            "server": "rtmp://pop.example:1935/live",
            "rtmp": "rtmp://pop.example:1935/live/" + body["stream_key"],
            "rtmps_server": "rtmps://pop.example:443/live",
            "rtmps": "rtmps://pop.example:443/live/" + body["stream_key"],
        })
        self.assertEqual(body["playback"], {"dash": "https://pop.example/live/%s/manifest.mpd" % (vid,),
                                            "hls": "https://pop.example/live/%s/master.m3u8" % (vid,)})
        record = self.successResultOf(self.registry.get_video(vid))
        self.assertEqual(record, VideoRecord(vid, "dc1", self.clock.seconds(), "my show"))

    def test_the_body_is_optional_and_a_title_is_cut_short(self) -> None:
        self.assertEqual(self.call(b"POST")[1]["title"], "")
        self.assertEqual(self.call(b"POST", body=b"{}")[1]["title"], "")
        self.assertEqual(len(self.create("x" * 1000)["title"]), 200)

    def test_a_body_that_is_not_an_object_with_a_string_title_is_a_400(self) -> None:
        for body in (b"{", b"[]", b'"title"', b"1", b"null", b'{"title": 5}', b'{"title": null}',
                     b'{"title": ["a"]}', b"\xff\xfe", b'{"title": "' + b"x" * MAX_BODY + b'"}'):
            status, answered = self.call(b"POST", body=body)
            self.assertEqual(status, 400, body[:40])
            self.assertIn("JSON object", answered["error"])
        self.assertEqual(self.call(b"GET"), (200, {"live_videos": []}))

    def test_deeply_nested_json_is_a_400_not_a_503(self) -> None:
        status, body = self.call(b"POST", body=b"[" * 5000 + b"]" * 5000)
        self.assertEqual(status, 400, body)
        status, body = self.call(b"POST", body=b'{"title": ' + b"[" * 5000 + b"]" * 5000 + b"}")
        self.assertEqual(status, 400, body)


class CreationRate(APICase):
    def settings(self) -> APISettings:
        return attrs.evolve(super().settings(), create_rate=1.0, create_burst=5)

    def test_creation_is_rate_limited_per_caller(self) -> None:
        codes = [self.call(b"POST", body=b"{}")[0] for _ in range(8)]
        self.assertEqual(codes, [201] * 5 + [429] * 3)
        self.clock.advance(2)
        self.assertEqual([self.call(b"POST", body=b"{}")[0] for _ in range(3)], [201, 201, 429])


class Show(APICase):
    def test_a_video_says_what_its_owner_last_wrote(self) -> None:
        vid = self.create()["id"]
        status, body = self.call(b"GET", vid)
        self.assertEqual((status, body["status"]), (200, "created"))
        self.assertNotIn("token", body)  # shown once, at creation
        claim = self.successResultOf(self.registry.claim(vid, "encoder2", "tcp:10.0.0.2:8081"))
        self.successResultOf(self.registry.write_state(claim, attrs.evolve(
            state(status=VideoStatus.INTERRUPTED, encoder="encoder2"), fence=claim.owner.fence)))
        body = self.call(b"GET", vid)[1]
        self.assertEqual((body["status"], body["encoder"], body["fence"]), ("interrupted", "encoder2", 1))

    def test_unknown_or_malformed_ids_are_a_404(self) -> None:
        self.create()
        for path in ("0123456789abcdef", "../../etc", "0123456789ABCDEF", "0123456789abcdef0", "a/b"):
            status, body = self.call(b"GET", path)
            self.assertEqual(status, 404, path)
            self.assertIn("error", body)


class List(APICase):
    def test_each_video_with_its_status(self) -> None:
        created, live, ended = (self.create(t)["id"] for t in ("a", "b", "c"))
        claim = self.successResultOf(self.registry.claim(live, "encoder0", "tcp:10.0.0.1:8081"))
        self.successResultOf(self.registry.write_state(claim, state(encoder="encoder0")))
        self.assertEqual(self.call(b"DELETE", ended)[0], 200)
        status, body = self.call(b"GET")
        self.assertEqual(status, 200)
        self.assertEqual({v["id"]: v["status"] for v in body["live_videos"]},
                         {created: "created", live: "live", ended: "ended"})
        self.assertNotIn("next", body)

    def test_the_list_comes_a_page_at_a_time(self) -> None:
        made = []
        for _ in range(7):
            self.clock.advance(10)  # a new bucket token, and a distinct creation time
            made.append(self.call(b"POST", body=b"{}")[1]["id"])
        status, page = self.call(b"GET", args={b"limit": b"3"})
        self.assertEqual(status, 200)
        self.assertEqual([v["id"] for v in page["live_videos"]], made[::-1][:3])
        seen = [v["id"] for v in page["live_videos"]]
        while "next" in page:
            after = page["next"].split("after=")[1].encode()
            status, page = self.call(b"GET", args={b"limit": b"3", b"after": after})
            seen += [v["id"] for v in page["live_videos"]]
        self.assertEqual(seen, made[::-1])
        for bad in ({b"limit": b"0"}, {b"limit": b"5000"}, {b"limit": b"x"}, {b"after": b"../x"}):
            self.assertEqual(self.call(b"GET", args=bad)[0], 400, bad)


class End(APICase):
    def test_ending_writes_the_record_the_encoders_watch(self) -> None:
        vid = self.create()["id"]
        heard: list[tuple[str, VideoRecord]] = []
        self.registry.watch_videos(lambda stream, record: heard.append((stream, record)))
        self.clock.advance(60)
        status, body = self.call(b"DELETE", vid)
        self.assertEqual((status, body["id"], body["status"]), (200, vid, "ended"))
        [(stream, record)] = heard
        self.assertEqual((stream, record.ended, record.ended_at), (vid, True, self.clock.seconds()))
        # Ended whatever its last owner wrote.
        claim = self.successResultOf(self.registry.claim(vid, "encoder0", "tcp:10.0.0.1:8081"))
        self.successResultOf(self.registry.write_state(claim, state()))
        self.assertEqual(self.call(b"GET", vid)[1]["status"], "ended")

    def test_an_unknown_video_is_a_404(self) -> None:
        self.assertEqual(self.call(b"DELETE", "0123456789abcdef")[0], 404)


class Refusals(APICase):
    def test_without_the_key_nothing_is_done(self) -> None:
        vid = self.create()["id"]
        self.patch(self.registry, "put_video", lambda *a: self.fail("written without the key"))
        for key in (None, b"", b"the api ke", b"the api key ", KEY + b"x"):
            for method, path in ((b"GET", ""), (b"POST", ""), (b"GET", vid), (b"DELETE", vid)):
                request = self.request(method, path, b"{}", key)
                status, body = answer(self.api, request)
                self.assertEqual(status, 401, (key, method))
                self.assertEqual(request.responseHeaders.getRawHeaders(b"www-authenticate"),
                                 [b'Bearer realm="fbstream"'])
        request = self.request(b"GET")
        request.requestHeaders.setRawHeaders(b"authorization", [b"Basic " + KEY])
        self.assertEqual(answer(self.api, request)[0], 401)

    def test_the_scheme_name_is_case_insensitive(self) -> None:
        for scheme in (b"bearer", b"BEARER", b"Bearer"):
            request = self.request(b"GET", key=None)
            request.requestHeaders.setRawHeaders(b"authorization", [scheme + b" " + KEY])
            self.assertEqual(answer(self.api, request)[0], 200, scheme)

    def test_methods_and_paths_outside_the_api(self) -> None:
        vid = self.create()["id"]
        for method, path, allow in ((b"DELETE", "", b"GET, POST"), (b"PUT", "", b"GET, POST"),
                                    (b"POST", vid, b"GET, DELETE"), (b"PATCH", vid, b"GET, DELETE")):
            request = self.request(method, path)
            self.assertEqual(answer(self.api, request)[0], 405, (method, path))
            self.assertEqual(request.responseHeaders.getRawHeaders(b"allow"), [allow])
        self.assertEqual(self.call(b"GET", vid + "/state")[0], 404)


class RegistryTrouble(APICase):
    """503 (try again) when the registry cannot be reached; 500, logged, for a bug."""

    def test_each_call_is_a_503_while_the_registry_is_away(self) -> None:
        vid = self.create()["id"]
        away = lambda *a: fail(RegistryUnavailable("no etcd member answered"))  # noqa: E731
        for name in ("create_video", "get_video", "list_videos"):
            self.patch(self.registry, name, away)
        for method, path in ((b"POST", ""), (b"GET", vid), (b"GET", ""), (b"DELETE", vid)):
            self.assertEqual(self.call(method, path), (503, {"error": "the registry is unavailable"}), method)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_a_failed_write_ends_nothing(self) -> None:
        vid = self.create()["id"]
        self.patch(self.registry, "put_video", lambda *a: fail(RegistryUnavailable("no etcd member answered")))
        self.assertEqual(self.call(b"DELETE", vid)[0], 503)
        record = self.successResultOf(self.registry.get_video(vid))
        self.assertFalse(record is None or record.ended)

    def test_a_bug_is_a_500_with_its_traceback_logged(self) -> None:
        vid = self.create()["id"]
        self.patch(self.registry, "read_state", lambda *a: fail(TypeError("a bug")))
        self.assertEqual(self.call(b"GET", vid), (500, {"error": "internal error"}))
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_an_unreachable_registry_is_a_503_and_a_bug_a_500(self) -> None:
        self.patch(self.registry, "list_videos", lambda *a, **k: fail(RegistryUnavailable("no etcd member answered")))
        status, body = self.call(b"GET")
        self.assertEqual((status, body), (503, {"error": "the registry is unavailable"}))
        self.patch(self.registry, "list_videos", lambda *a, **k: fail(KeyError("a bug")))
        status, body = self.call(b"GET")
        self.assertEqual((status, body), (500, {"error": "internal error"}))
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)


class CallerGone(APICase):
    """
    The caller hangs up while the registry is slow to answer: when it does,
    nothing is written to the closed connection and nothing is logged as a
    failure. A real twisted.web ``Request``, whose ``finish`` refuses a lost
    connection.
    """

    def slow(self, name: str) -> list[Deferred[Any]]:
        held: list[Deferred[Any]] = []
        real = getattr(self.registry, name)

        def call(*args: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            d.addCallback(lambda _: real(*args))
            held.append(d)
            return d

        self.patch(self.registry, name, call)
        return held

    def hang_up(self, method: bytes, path: str, body: bytes = b"") -> DummyChannel:
        """Call, and hang up before the answer; returns the connection."""
        channel = DummyChannel()
        request = Request(channel, False)
        request.method = method
        request.clientproto = b"HTTP/1.1"
        request.postpath = [path.encode()] if path else []
        # What requestReceived sets, which Twisted's class declares None until then.
        request.content = io.BytesIO(body)  # type: ignore[assignment]
        request.args = {}  # type: ignore[assignment]
        request.requestHeaders.setRawHeaders(b"authorization", [b"Bearer " + KEY])
        self.assertEqual(self.api.render(request), NOT_DONE_YET)
        request.connectionLost(Failure(ConnectionDone()))
        return channel

    def test_during_a_show_a_list_an_end_or_a_create(self) -> None:
        vid = self.create()["id"]
        for name, method, path in (("get_video", b"GET", vid), ("list_videos", b"GET", ""),
                                   ("get_video", b"DELETE", vid), ("create_video", b"POST", "")):
            held = self.slow(name)
            channel = self.hang_up(method, path, b"{}")
            [d] = held
            d.callback(None)
            self.assertEqual(channel.transport.written.getvalue(), b"", (method, path))
            self.assertEqual(self.flushLoggedErrors(), [], (method, path))
