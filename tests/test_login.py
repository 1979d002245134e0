"""
Signing a browser in to the live API, on a Clock: a login code works once and
not after it expires, the session cookie it buys is accepted only unaltered,
unexpired and with the page's header, and the live API takes the session in
place of the API key.
"""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fbstream.live.api import APISettings, LiveVideosResource
from fbstream.live.login import COOKIE, SessionResource, Sessions
from fbstream.live.tokens import KeyRing
from fbstream.registry.memory import MemoryRegistry
from tests.web_helpers import APIRequest, answer


class SessionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.sessions = Sessions("the api key", self.clock, ttl=3600, code_ttl=600)
        self.resource = SessionResource(self.sessions)

    def sign_in(self, code: str) -> tuple[int, dict, APIRequest]:
        request = APIRequest(b"POST", body=json.dumps({"login": code}).encode())
        code_, body = answer(self.resource, request)
        return code_, body, request

    def test_a_code_signs_in_once(self) -> None:
        code = self.sessions.new_code()
        status, body, request = self.sign_in(code)
        self.assertEqual((status, body), (200, {"signed_in": True}))
        [(name, value, attrs)] = request.cookies_set
        self.assertEqual(name, COOKIE)
        self.assertEqual((attrs["httpOnly"], attrs["sameSite"], attrs["path"]), (True, "strict", b"/api/"))
        self.assertTrue(self.sessions.valid(value))
        status, body, request = self.sign_in(code)
        self.assertEqual(status, 403)
        self.assertEqual(request.cookies_set, [])

    def test_codes_expire_and_are_bounded(self) -> None:
        old = self.sessions.new_code()
        self.clock.advance(601)
        self.assertEqual(self.sign_in(old)[0], 403)
        codes = [self.sessions.new_code() for _ in range(10)]
        self.assertEqual(self.sign_in(codes[0])[0], 403)  # dropped: only the newest four stay
        self.assertEqual(self.sign_in(codes[-1])[0], 200)

    def test_hostile_codes_are_refused(self) -> None:
        self.sessions.new_code()
        for body in (b"", b"{", b"[]", b'{"login": 1}', b'{"login": ""}', b'{"login": "' + b"a" * 5000 + b'"}',
                     json.dumps({"login": "x" * 32}).encode()):
            request = APIRequest(b"POST", body=body)
            self.assertEqual(answer(self.resource, request)[0], 403, body[:40])

    def test_the_page_header_is_required(self) -> None:
        request = APIRequest(b"POST", body=json.dumps({"login": self.sessions.new_code()}).encode(), page=False)
        self.assertEqual(answer(self.resource, request)[0], 403)

    def test_a_cookie_is_valid_only_unaltered_and_unexpired(self) -> None:
        _, _, request = self.sign_in(self.sessions.new_code())
        value = request.cookies_set[0][1]
        stamp, mac = value.split(b".")
        for forged in (stamp + b"." + mac[:-1] + (b"0" if mac[-1:] != b"0" else b"1"),
                       str(int(stamp) + 1).encode() + b"." + mac, value + b"0", value.upper(), b"", b"."):
            self.assertFalse(self.sessions.valid(forged), forged)
        self.assertFalse(Sessions("another key", self.clock).valid(value))
        self.assertEqual(answer(self.resource, APIRequest(b"GET", cookie=value))[1], {"signed_in": True})
        self.clock.advance(3601)
        self.assertFalse(self.sessions.valid(value))
        self.assertEqual(answer(self.resource, APIRequest(b"GET", cookie=value))[1], {"signed_in": False})

    def test_signing_out_clears_the_cookie(self) -> None:
        request = APIRequest(b"DELETE")
        self.assertEqual(answer(self.resource, request), (200, {"signed_in": False}))
        self.assertEqual(request.cookies_set[0][1], b"")


class LiveAPISessionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.sessions = Sessions("the api key", self.clock)
        settings = APISettings("the api key", "dc1", 3600, "rtmp://127.0.0.1:1935/live", "",
                               "http://127.0.0.1:8080")
        self.api = LiveVideosResource(MemoryRegistry(self.clock, 10), KeyRing.generate(), settings,
                                      self.clock, self.sessions)
        request = APIRequest(b"POST", body=json.dumps({"login": self.sessions.new_code()}).encode())
        answer(SessionResource(self.sessions), request)
        self.cookie = request.cookies_set[0][1]

    def test_a_session_creates_a_live_video_with_what_obs_asks_for(self) -> None:
        status, body = answer(self.api, APIRequest(b"POST", body=b'{"title": "my show"}', cookie=self.cookie))
        self.assertEqual(status, 201)
        self.assertEqual(body["ingest"]["server"], "rtmp://127.0.0.1:1935/live")
        self.assertEqual(body["ingest"]["rtmp"], body["ingest"]["server"] + "/" + body["stream_key"])
        self.assertTrue(body["stream_key"].startswith(body["id"] + "?token="))

    def test_without_the_page_header_or_a_valid_cookie_it_is_refused(self) -> None:
        self.assertEqual(answer(self.api, APIRequest(b"POST", cookie=self.cookie, page=False))[0], 401)
        self.assertEqual(answer(self.api, APIRequest(b"POST", cookie=self.cookie[:-1] + b"x"))[0], 401)
        self.assertEqual(answer(self.api, APIRequest(b"GET"))[0], 401)
