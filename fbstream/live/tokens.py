"""
Stream tokens: what lets a broadcaster publish one live video.

A token is ``<kid>.<claims>.<mac>``: the id of the signing key, the claims as
base64url JSON (``s`` the stream id, ``dc`` the data center, ``iat`` and
``exp`` in Unix seconds) and an HMAC-SHA256 of the first two parts, base64url.
Every character is URL-safe, so it rides in the RTMP stream key
(``<stream_id>?token=<token>``) untouched.

The live API signs with the newest key; verifiers accept every key they hold,
so keys rotate by adding one (which signs from then on) and dropping the old
one once its tokens have expired. The PoP never verifies: it only reads the
data center from the claims to pick where to relay (:func:`peek_datacenter`),
and a forged data center only gets a forged token to an encoder that refuses it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
from typing import Any

import attrs

#: How long a token lives unless the API is told otherwise (as Facebook's).
DEFAULT_TTL = 24 * 3600
#: Key ids are short names; secrets are at least 16 bytes.
KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
MIN_SECRET = 16
#: Tokens longer than this are refused before any decoding.
MAX_TOKEN = 1024


class TokenError(Exception):
    """The token is refused; the message says why, for the broadcaster."""


class KeyConfigError(ValueError):
    """The signing keys are misconfigured."""


@attrs.frozen
class Claims:
    stream: str
    datacenter: str
    issued: int
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_BASE64URL = re.compile(r"^[A-Za-z0-9_-]*$")


def _unb64(text: str) -> bytes:
    """
    Strict unpadded base64url: a token has one form only. Padding, ``+/``,
    characters outside the alphabet, trailing junk and a last character whose
    unused bits are set (which lenient decoders read as the same bytes) are
    all refused.
    """
    if not _BASE64URL.match(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:
        raise ValueError("not the canonical base64url of its bytes")
    return data


@attrs.frozen
class KeyRing:
    """Signing keys by id; ``current`` signs, all of them verify."""

    keys: dict[str, bytes]
    current: str

    @classmethod
    def parse(cls, text: str) -> KeyRing:
        """
        ``kid:hexsecret`` entries separated by commas or newlines, the newest
        (the one that signs) first.
        """
        keys: dict[str, bytes] = {}
        order: list[str] = []
        for entry in re.split(r"[,\n]", text):
            entry = entry.strip()
            if not entry or entry.startswith("#"):
                continue
            kid, sep, secret = entry.partition(":")
            if not sep or not KEY_ID.match(kid):
                raise KeyConfigError("token key %r is not <id>:<hex secret>" % (entry[:40],))
            try:
                raw = bytes.fromhex(secret.strip())
            except ValueError:
                raise KeyConfigError("token key %s: the secret is not hex" % (kid,)) from None
            if len(raw) < MIN_SECRET:
                raise KeyConfigError("token key %s: the secret is shorter than %d bytes" % (kid, MIN_SECRET))
            if kid in keys:
                raise KeyConfigError("token key %s is given twice" % (kid,))
            keys[kid] = raw
            order.append(kid)
        if not keys:
            raise KeyConfigError("no token keys")
        return cls(keys, order[0])

    @classmethod
    def load(cls, path: str, environ: dict[str, str] | None = None) -> KeyRing | None:
        """The keys in the file ``path`` if given, else ``$FBSTREAM_TOKEN_KEYS``, else None."""
        if path:
            try:
                with open(path) as f:
                    return cls.parse(f.read())
            except OSError as e:
                raise KeyConfigError("cannot read token keys from %s: %s" % (path, e.strerror)) from None
        text = (environ if environ is not None else os.environ).get("FBSTREAM_TOKEN_KEYS", "")
        return cls.parse(text) if text.strip() else None

    @classmethod
    def generate(cls, kid: str = "ephemeral") -> KeyRing:
        return cls({kid: os.urandom(32)}, kid)

    def sign(self, stream: str, datacenter: str, now: float, ttl: float = DEFAULT_TTL) -> str:
        claims = {"s": stream, "dc": datacenter, "iat": int(now), "exp": int(now + ttl)}
        body = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
        signed = ("%s.%s" % (self.current, body)).encode()
        mac = hmac.new(self.keys[self.current], signed, hashlib.sha256).digest()
        return "%s.%s.%s" % (self.current, body, _b64(mac))

    def verify(self, token: str, stream: str, now: float) -> Claims:
        """The claims of ``token`` if it is genuine, current and for ``stream``."""
        kid, body, mac = _split(token)
        key = self.keys.get(kid)
        if key is None:
            raise TokenError("the stream token was signed with an unknown key")
        expected = hmac.new(key, ("%s.%s" % (kid, body)).encode(), hashlib.sha256).digest()
        try:
            given = _unb64(mac)
        except (binascii.Error, ValueError):
            raise TokenError("the stream token is malformed") from None
        if not hmac.compare_digest(expected, given):
            raise TokenError("the stream token's signature is not valid")
        claims = _claims(body)
        if claims.expires <= now:
            raise TokenError("the stream token has expired")
        if claims.stream != stream:
            raise TokenError("the stream token is for another live video")
        return claims


def _split(token: str) -> tuple[str, str, str]:
    if not token:
        raise TokenError("a stream token is required (publish to <stream id>?token=<token>)")
    if len(token) > MAX_TOKEN:
        raise TokenError("the stream token is too long")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise TokenError("the stream token is malformed")
    return parts[0], parts[1], parts[2]


def _claims(body: str) -> Claims:
    try:
        raw: Any = json.loads(_unb64(body))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise TokenError("the stream token is malformed") from None
    if not isinstance(raw, dict):
        raise TokenError("the stream token is malformed")
    stream, dc, iat, exp = raw.get("s"), raw.get("dc"), raw.get("iat"), raw.get("exp")
    if not isinstance(stream, str) or not isinstance(dc, str):
        raise TokenError("the stream token is malformed")
    if not isinstance(iat, int) or not isinstance(exp, int) or isinstance(exp, bool):
        raise TokenError("the stream token is malformed")
    return Claims(stream, dc, iat, exp)


def peek_datacenter(token: str) -> str | None:
    """The data center a token names, unverified (for the PoP's routing)."""
    try:
        return _claims(_split(token)[1]).datacenter
    except TokenError:
        return None


def token_from_query(query: str) -> str:
    """``token=...`` out of the query string of an RTMP stream name."""
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key == "token":
            return value
    return ""
