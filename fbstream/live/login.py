"""
Signing a browser in to the live API without showing it the API key.

The ``all`` role prints, once, a link to its page carrying a one-time login
code (the way Jupyter prints its token URL). The page trades the code for a
session cookie (``POST /api/v1/session``); the code is gone from then on.
The cookie is ``<expiry>.<HMAC-SHA256 of the expiry>``, keyed by a secret
derived from the API key, so it needs no table and is refused everywhere
once the key changes. It is ``HttpOnly`` and ``SameSite=Strict``, and a
call authenticated by it must also carry ``X-Requested-With: fbstream``, a
header no other site's page can send without the browser asking us first.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import Request

COOKIE = b"fbstream_session"
#: The header a cookie-authenticated call must carry (a cross-site page cannot).
CSRF_HEADER = b"x-requested-with"
CSRF_VALUE = b"fbstream"
_COOKIE_VALUE = re.compile(rb"^([0-9]{1,12})\.([0-9a-f]{64})$")
#: A login code, as :func:`secrets.token_urlsafe` makes them.
_CODE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
MAX_BODY = 1024


class Sessions:
    """
    One-time login codes and the session cookies they are traded for.

    At most ``max_codes`` codes are outstanding (the oldest is dropped), each
    valid for ``code_ttl`` seconds or until used; a session lasts ``ttl``.
    """

    def __init__(self, api_key: str, clock: IReactorTime, ttl: float = 12 * 3600, code_ttl: float = 24 * 3600,
                 max_codes: int = 4) -> None:
        self._secret = hmac.new(api_key.encode(), b"fbstream browser session", hashlib.sha256).digest()
        self.clock = clock
        self.ttl = ttl
        self.code_ttl = code_ttl
        self.max_codes = max_codes
        self._codes: dict[str, float] = {}

    def new_code(self) -> str:
        """A fresh one-time login code."""
        code = secrets.token_urlsafe(24)
        self._codes[code] = self.clock.seconds() + self.code_ttl
        while len(self._codes) > self.max_codes:
            del self._codes[next(iter(self._codes))]
        return code

    def redeem(self, code: str) -> bytes | None:
        """The cookie value for ``code``, which is used up; None if it is unknown or expired."""
        if not isinstance(code, str) or not _CODE.match(code):
            return None
        now = self.clock.seconds()
        for known in list(self._codes):
            if hmac.compare_digest(known.encode(), code.encode()):
                expires = self._codes.pop(known)
                return self._cookie(int(now + self.ttl)) if expires > now else None
        return None

    def _cookie(self, expires: int) -> bytes:
        stamp = str(expires).encode()
        return stamp + b"." + hmac.new(self._secret, stamp, hashlib.sha256).hexdigest().encode()

    def valid(self, value: bytes | None) -> bool:
        if not value:
            return False
        match = _COOKIE_VALUE.match(value)
        if match is None or int(match.group(1)) <= self.clock.seconds():
            return False
        return hmac.compare_digest(self._cookie(int(match.group(1))), value)

    def authenticated(self, request: Request) -> bool:
        """Whether ``request`` carries a live session and the header that proves it came from our page."""
        return request.getHeader(CSRF_HEADER) == CSRF_VALUE and self.valid(request.getCookie(COOKIE))


class SessionResource(Resource):
    """
    ``/api/v1/session``: ``POST {"login": "<code>"}`` signs the browser in,
    ``GET`` says whether it is, ``DELETE`` signs it out.
    """

    isLeaf = True

    def __init__(self, sessions: Sessions) -> None:
        super().__init__()
        self.sessions = sessions

    def render(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        if request.postpath and any(request.postpath):
            return _json(request, 404, {"error": "no such URL"})
        if request.method == b"GET":
            return _json(request, 200, {"signed_in": self.sessions.authenticated(request)})
        if request.getHeader(CSRF_HEADER) != CSRF_VALUE:
            return _json(request, 403, {"error": "send X-Requested-With: fbstream"})
        if request.method == b"DELETE":
            self._set(request, b"", 0)
            return _json(request, 200, {"signed_in": False})
        if request.method != b"POST":
            request.setHeader(b"allow", b"GET, POST, DELETE")
            return _json(request, 405, {"error": "method not allowed"})
        body = request.content.read(MAX_BODY + 1) if request.content is not None else b""
        try:
            code = json.loads(body).get("login") if len(body) <= MAX_BODY else None
        except (ValueError, AttributeError, RecursionError):
            code = None
        cookie = self.sessions.redeem(code) if isinstance(code, str) else None
        if cookie is None:
            return _json(request, 403, {"error": "this login link is used up or unknown; restart the "
                                                 "server for a new one, or use the API key"})
        self._set(request, cookie, int(self.sessions.ttl))
        return _json(request, 200, {"signed_in": True})

    @staticmethod
    def _set(request: Request, value: bytes, max_age: int) -> None:
        request.addCookie(COOKIE, value, path=b"/api/", max_age=str(max_age).encode(), httpOnly=True,
                          secure=request.isSecure(), sameSite="strict")


def _json(request: Request, code: int, value: Any) -> bytes:
    request.setResponseCode(code)
    return json.dumps(value).encode() + b"\n"
