"""Stream tokens: signing, verification, rotation and every way to be refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fbstream.live.tokens import (
    KeyConfigError,
    KeyRing,
    TokenError,
    peek_datacenter,
    token_from_query,
)

SECRET = "00112233445566778899aabbccddeeff"
NOW = 1_800_000_000.0


def ring(text: str = "k1:" + SECRET) -> KeyRing:
    return KeyRing.parse(text)


def test_round_trip() -> None:
    keys = ring()
    token = keys.sign("abc123", "dc1", NOW)
    claims = keys.verify(token, "abc123", NOW + 10)
    assert (claims.stream, claims.datacenter) == ("abc123", "dc1")
    assert claims.expires - claims.issued == 24 * 3600
    assert peek_datacenter(token) == "dc1"


def test_a_token_has_one_form() -> None:
    """Lenient base64 read variants of a real signature as the same bytes: each is refused now."""
    keys = ring()
    token = keys.sign("abc123", "dc1", NOW)
    kid, body, mac = token.split(".")
    # The MAC is 32 bytes: 43 characters, whose last carries 2 unused bits.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(mac[-1])
    same_bits = [alphabet[(last & ~3) | low] for low in range(4) if (last & ~3) | low != last]
    variants = [mac[:-1] + c for c in same_bits]  # decode to the same bytes leniently
    variants += [mac + "=", mac + "A", mac + "==", mac + " ", mac.replace("-", "+").replace("_", "/")]
    if "-" not in mac and "_" not in mac:
        variants.append(mac[:-1] + "+")
    for variant in variants:
        if variant == mac:
            continue
        with pytest.raises(TokenError):
            keys.verify("%s.%s.%s" % (kid, body, variant), "abc123", NOW)
    for variant in (body + "=", body + "A", body.replace("-", "+")):
        if variant != body:
            with pytest.raises(TokenError):
                keys.verify("%s.%s.%s" % (kid, variant, mac), "abc123", NOW)
    keys.verify(token, "abc123", NOW)


def test_expired() -> None:
    keys = ring()
    token = keys.sign("abc", "dc1", NOW, ttl=60)
    keys.verify(token, "abc", NOW + 59)
    with pytest.raises(TokenError, match="expired"):
        keys.verify(token, "abc", NOW + 60)


def test_other_stream() -> None:
    keys = ring()
    with pytest.raises(TokenError, match="another live video"):
        keys.verify(keys.sign("abc", "dc1", NOW), "abd", NOW)


def test_forged_signature_and_claims() -> None:
    keys = ring()
    token = keys.sign("abc", "dc1", NOW)
    kid, body, mac = token.split(".")
    other = KeyRing.parse("k1:" + "ff" * 16).sign("abc", "dc1", NOW)
    with pytest.raises(TokenError, match="signature"):
        keys.verify(other, "abc", NOW)
    # Claims from another token under this token's MAC.
    _, body2, _ = keys.sign("xyz", "dc1", NOW).split(".")
    with pytest.raises(TokenError, match="signature"):
        keys.verify("%s.%s.%s" % (kid, body2, mac), "xyz", NOW)
    with pytest.raises(TokenError, match="unknown key"):
        keys.verify("k9.%s.%s" % (body, mac), "abc", NOW)


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "k1..x", "k1.!!!.x", "x" * 2000, "k1.e30.AAAA"])
def test_malformed(token: str) -> None:
    with pytest.raises(TokenError):
        ring().verify(token, "abc", NOW)


def test_rotation() -> None:
    old = ring("k1:" + SECRET)
    new = ring("k2:" + "aa" * 16 + ",k1:" + SECRET)
    assert new.current == "k2"
    token = old.sign("abc", "dc1", NOW)
    new.verify(token, "abc", NOW)  # old tokens still verify after rotation
    assert new.sign("abc", "dc1", NOW).startswith("k2.")
    with pytest.raises(TokenError, match="unknown key"):
        old.verify(new.sign("abc", "dc1", NOW), "abc", NOW)


@pytest.mark.parametrize("text", ["", "k1", "k1:zz", "k1:00", "bad id:" + SECRET, "k1:%s,k1:%s" % (SECRET, SECRET)])
def test_bad_keys(text: str) -> None:
    with pytest.raises(KeyConfigError):
        KeyRing.parse(text)


def test_load_from_env_and_file(tmp_path) -> None:
    assert KeyRing.load("", {}) is None
    assert KeyRing.load("", {"FBSTREAM_TOKEN_KEYS": "k1:" + SECRET}).current == "k1"  # type: ignore[union-attr]
    path = tmp_path / "keys"
    path.write_text("# newest first\nk3:%s\n" % (SECRET,))
    assert KeyRing.load(str(path), {}).current == "k3"  # type: ignore[union-attr]
    with pytest.raises(KeyConfigError, match="cannot read"):
        KeyRing.load(str(tmp_path / "missing"), {})


def test_query() -> None:
    assert token_from_query("a=1&token=xyz&b=2") == "xyz"
    assert token_from_query("") == ""


@given(st.text(max_size=300))
def test_fuzz_never_crashes(text: str) -> None:
    with pytest.raises(TokenError):
        ring().verify(text, "abc", NOW)
    peek_datacenter(text)
