"""The push channel's settings: what a role refuses to start with."""

from __future__ import annotations

import pytest

from fbstream import config
from fbstream.config import ConfigError
from fbstream.push.service import check_push

SECRET = "a-secret-of-enough-length"


def role(name: str, *sets: str):
    return config.load(name, None, list(sets))[name]


def test_a_channel_open_to_other_hosts_needs_a_secret_or_client_certificates(monkeypatch):
    monkeypatch.delenv("FBSTREAM_PUSH_SECRET", raising=False)
    check_push(role("origin", 'push.listen=["tcp:8086:interface=127.0.0.1"]'))  # loopback: fine
    with pytest.raises(ConfigError, match="reachable from other hosts"):
        check_push(role("origin", 'push.listen=["tcp:8086"]'))
    monkeypatch.setenv("FBSTREAM_PUSH_SECRET", SECRET)
    check_push(role("origin", 'push.listen=["tcp:8086"]'))


def test_a_secret_never_crosses_the_network_in_the_clear(monkeypatch):
    monkeypatch.setenv("FBSTREAM_PUSH_SECRET", SECRET)
    check_push(role("pop", 'push.origins=["tcp:127.0.0.1:8086"]'))
    with pytest.raises(ConfigError, match="in the clear"):
        check_push(role("pop", 'push.origins=["tcp:10.0.0.2:8086"]'))


def test_a_weak_or_unreadable_secret_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("FBSTREAM_PUSH_SECRET", "short")
    with pytest.raises(ConfigError, match="at least 16"):
        check_push(role("encoder", "tokens.required=false"))
    monkeypatch.delenv("FBSTREAM_PUSH_SECRET")
    with pytest.raises(ConfigError, match=r"cannot read push\.secret_file"):
        check_push(role("encoder", "tokens.required=false", "push.secret_file=%s" % (tmp_path / "missing",)))
    with pytest.raises(ConfigError, match=r"cannot read push\.tls_ca"):
        check_push(role("encoder", "tokens.required=false", "push.tls_ca=%s" % (tmp_path / "missing.pem",)))
