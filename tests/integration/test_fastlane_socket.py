"""
The viewers' lane on a real socket: an answer larger than the socket takes
at once is sent partly straight to the socket, the rest through the
transport, whole and in order, also to a client that is slow to read; and
the next request on the connection is answered after it. So is a whole hit
on a cache's object, which the lane sends itself.
"""

from __future__ import annotations

import socket
import time
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import Site

from fbstream.cache.engine import CacheSettings, CachingResource
from fbstream.cache.fastlane import ViewerSite
from tests.test_fastlane import hold

from .conftest import free_port

reactor = cast(Any, _reactor)
BODY = bytes(range(256)) * (16 * 1024)  # 4 MiB, no two neighbouring chunks alike


class Playback:
    def whole_hit(self, path: bytes, viewer: Any) -> None:
        return None  # every request rendered

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"video/mp4")
        return BODY if request.path.endswith(b"/big.m4s") else b"small"


def fetch_twice_slowly(port: int) -> tuple[bytes, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        s.sendall(b"GET /live/s/big.m4s HTTP/1.1\r\nHost: x\r\n\r\nGET /live/s/1.m4s HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.5)  # the server's first sendmsg fills the socket; the rest waits in the transport
        data = b""
        while data.count(b"\r\n\r\n") < 2 or not data.endswith(b"small"):
            piece = s.recv(65536)
            if not piece:
                break
            data += piece
            time.sleep(0.001)
    first_head, _, rest = data.partition(b"\r\n\r\n")
    return rest[:len(BODY)], rest[len(BODY):]


@pytest.mark.parametrize("served", ["rendered", "whole hit"])
@pytest_twisted.inlineCallbacks
def test_a_big_answer_to_a_slow_reader_arrives_whole_and_in_order(served):
    # Rendered: the lane's request, written by what renders it. A whole hit:
    # a cache's object, which the lane sends itself.
    playback: Any = Playback()
    if served == "whole hit":
        playback = CachingResource("pop-proxy", lambda path: Deferred(), reactor, CacheSettings())
        hold(playback, b"/live/s/big.m4s", [BODY[i:i + 65536] for i in range(0, len(BODY), 65536)])
        hold(playback, b"/live/s/1.m4s", [b"small"])
        hits = playback.m_hits._value.get()
    port = free_port()
    listening = reactor.listenTCP(port, ViewerSite(Site(Resource()), playback, reactor), interface="127.0.0.1")
    try:
        body, after = yield threads.deferToThread(fetch_twice_slowly, port)
    finally:
        yield listening.stopListening()
    assert body == BODY
    assert after.startswith(b"HTTP/1.1 200 OK\r\n") and after.endswith(b"\r\n\r\nsmall")
    if served == "whole hit":
        assert b"x-cache: HIT pop-proxy\r\n" in after
        assert playback.m_hits._value.get() - hits == 2
