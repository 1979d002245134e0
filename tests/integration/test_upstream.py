"""
A cache's GETs from the next tier over kept-alive connections: a connection
whose host died since its last use (or closed it) is lost before any answer,
and the GET goes once more, to the next host, or to the same one on a new
connection. (An origin killed mid-push once cut a viewer's segment this way:
the refetch after the push was reset went out on a dead connection.)
"""

from __future__ import annotations

from typing import Any, cast

import pytest_twisted
from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.web.client import readBody
from twisted.web.resource import Resource
from twisted.web.server import Site

from fbstream.cache.upstream import Upstreams

from .conftest import free_port

reactor = cast(Any, _reactor)


class Host(Resource):
    """
    Answers its name; once dead, drops each request's connection without an
    answer; ``drop`` requests to come are dropped so too.
    """

    isLeaf = True

    def __init__(self, name: bytes) -> None:
        super().__init__()
        self.name = name
        self.dead = False
        self.drop = 0
        self.answered = 0

    def render_GET(self, request):  # type: ignore[no-untyped-def]
        if self.dead or self.drop:
            self.drop = max(0, self.drop - 1)
            request.channel.transport.abortConnection()
            return b""
        self.answered += 1
        return self.name


@pytest_twisted.inlineCallbacks
def test_a_get_on_a_dead_hosts_kept_connection_goes_to_the_next_host():
    hosts = [Host(b"a"), Host(b"b")]
    ports = [free_port(), free_port()]
    listening = [reactor.listenTCP(port, Site(host), interface="127.0.0.1") for port, host in zip(ports, hosts)]
    upstreams = Upstreams(reactor, ["tcp:127.0.0.1:%d" % (port,) for port in ports], tier="test")
    try:
        # A path host a serves first, fetched once so its connection is kept.
        path = next(b"/live/s/%d.m4s" % (n,) for n in range(100) if next(upstreams.ring.walk(b"/live/s/%d.m4s" % (n,))) == 0)
        response = yield upstreams.get(path)
        assert (yield readBody(response)) == b"a"
        # Host a dies: no new connection, and the kept one is cut on use.
        hosts[0].dead = True
        yield listening[0].stopListening()
        response = yield upstreams.get(path)
        assert response.code == 200 and (yield readBody(response)) == b"b"
    finally:
        yield upstreams.close()
        yield defer.DeferredList([port.stopListening() for port in listening[1:]])


@pytest_twisted.inlineCallbacks
def test_a_get_on_a_closed_kept_connection_of_the_only_host_goes_again_on_a_new_one():
    host = Host(b"a")
    port = free_port()
    listening = reactor.listenTCP(port, Site(host), interface="127.0.0.1")
    upstreams = Upstreams(reactor, ["tcp:127.0.0.1:%d" % (port,)], tier="test")
    try:
        response = yield upstreams.get(b"/live/s/1.m4s")
        assert (yield readBody(response)) == b"a"
        host.drop = 1  # the kept connection is cut when it is used
        response = yield upstreams.get(b"/live/s/2.m4s")
        assert response.code == 200 and (yield readBody(response)) == b"a"
        assert host.answered == 2
    finally:
        yield upstreams.close()
        yield listening.stopListening()
