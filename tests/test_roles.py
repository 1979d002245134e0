"""
Every role built the way ``twistd fbstream`` builds it (``tap.makeService``),
on a ``MemoryReactorClock``: it starts, listens where its configuration says,
routes ``/metrics`` on the site it listens with, and stops (its thread pools
hand back through the reactor it was given, not the global one).
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any, cast

import pytest
from twisted.application.service import MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.web.resource import ErrorPage
from twisted.web.test.requesthelper import DummyRequest

from fbstream import tap
from fbstream.reactors import IReactorRoles


class Reactor(MemoryReactorClock):
    """
    A memory reactor that also takes what the roles' thread pools hand back:
    what the roles use of ``IReactorRoles`` without the demo (which spawns a
    process).
    """

    def __init__(self):
        super().__init__()
        self.from_threads: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = (
            queue.SimpleQueue())

    def callFromThread(self, callable, *args, **kwargs):
        self.from_threads.put((callable, args, kwargs))

    def settle(self, quiet=0.2):
        """Run what threads handed back until none hands back more for ``quiet`` seconds."""
        while True:
            try:
                f, args, kwargs = self.from_threads.get(timeout=quiet)
            except queue.Empty:
                return
            f(*args, **kwargs)


def options(role, *sets):
    o = tap.Options()
    o.parseOptions(["--role", role, *[a for s in sets for a in ("--set", s)]])
    return o


def listening(reactor):
    """port -> factory of every TCP listener the role opened."""
    return {port: factory for port, factory, _, _ in reactor.tcpServers}


def serves_metrics(factory):
    """Whether a listener's web site (the limits wrapper included) has a /metrics."""
    site = getattr(factory, "site", None) or getattr(factory, "wrappedFactory", factory)
    request = DummyRequest([b"metrics"])
    request.uri = b"/metrics"
    return not isinstance(site.getResourceFor(request), ErrorPage)


ROLES = {
    # role: (settings, the ports its configuration listens on)
    # A memory reactor spawns no processes: the PoP's workers are started for
    # real in tests/test_workers.py.
    "pop": (("pop.workers=1",), {1935, 8080, 8084}),
    "dc-proxy": ((), {1936, 8081}),
    "encoder": (("tokens.required=false",), {1937, 8082}),
    "origin": ((), {8083}),
}


@pytest.mark.parametrize("role", sorted(ROLES))
def test_each_role_builds_starts_and_stops_on_a_memory_reactor(role, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    sets, ports = ROLES[role]
    reactor = Reactor()
    service = tap.makeService(options(role, *sets), cast(IReactorRoles, reactor))
    service.startService()
    reactor.settle()
    try:
        opened = listening(reactor)
        assert ports <= set(opened), (role, sorted(opened))
        http = {"pop": 8080, "dc-proxy": 8081, "encoder": 8082, "origin": 8083}[role]
        assert serves_metrics(opened[http])
    finally:
        stopped = service.stopService()
    reactor.settle()
    reactor.advance(60)
    assert stopped is None or stopped.called


def test_the_all_role_builds_every_role_in_one_process(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    reactor = Reactor()
    service = tap.makeService(options("all"), cast(IReactorRoles, reactor))
    service.startService()
    reactor.settle()
    try:
        opened = listening(reactor)
        assert sorted(opened) == [1935, 1936, 1937, 8080, 8081, 8082, 8083, 8084]
        assert isinstance(service, MultiService)
        assert sorted(s.name for s in service) == ["dc-proxy", "encoder", "origin", "pop"]
        assert all(serves_metrics(opened[port]) for port in (8080, 8081, 8082, 8083))
    finally:
        stopped = service.stopService()
    reactor.settle()
    reactor.advance(60)
    assert stopped is None or stopped.called


def test_a_role_without_its_secrets_is_a_usage_error(monkeypatch):
    monkeypatch.delenv("FBSTREAM_TOKEN_KEYS", raising=False)
    with pytest.raises(usage.UsageError) as raised:
        options("encoder")
    assert "token keys" in str(raised.value)


@pytest.mark.parametrize("where", ["file", "off"])
def test_the_access_log_goes_to_a_file_or_nowhere(where, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "access.log"
    reactor = Reactor()
    service = tap.makeService(options("origin", "http.access_log=%s" % (path if where == "file" else "off",)),
                              cast(IReactorRoles, reactor))
    service.startService()
    site = listening(reactor)[8083].wrappedFactory
    site.startFactory()
    request: Any = DummyRequest([b"live", b"s", b"1.m4s"])
    request.uri, request.method, request.clientproto, request.code, request.sentLength = (
        b"/live/s/1.m4s?token=secret", b"GET", b"HTTP/1.1", 200, 1234)
    try:
        site.log(request)
    finally:
        site.stopFactory()
        service.stopService()
    if where == "file":
        line = path.read_text()
        assert '"GET /live/s/1.m4s?token=- HTTP/1.1" 200 1234' in line and "secret" not in line, line
    else:
        assert not path.exists()
