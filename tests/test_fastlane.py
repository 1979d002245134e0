"""
The viewers' lane (:mod:`fbstream.cache.fastlane`): ``GET /live/...`` read
and answered without twisted.web, in order and kept alive, and everything
else handed to twisted.web with the bytes already read.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.static import Data

from fbstream.cache.engine import IMMUTABLE, CachedObject, CacheSettings, CachingResource
from fbstream.cache.fastlane import MAX_HEAD, ViewerSite


class Playback:
    """What the lane renders: a path's name, at once, or later (``held``) in two writes, unsized."""

    def __init__(self) -> None:
        self.held: list[Any] = []
        self.seen: list[bytes] = []

    def whole_hit(self, path: bytes, viewer: Any) -> None:
        return None  # every request rendered

    def render_GET(self, request: Any) -> bytes | int:
        self.seen.append(request.uri)
        if request.path.endswith(b"/held"):
            self.held.append(request)
            return NOT_DONE_YET
        request.setHeader(b"content-type", b"video/mp4")
        return b"body of " + request.path


def lane(clock: Clock | None = None, playback: Any = None) -> tuple[Any, StringTransportWithDisconnection, Any, Any]:
    root = Resource()
    root.putChild(b"page", Data(b"the page", "text/html"))
    site = Site(root)
    playback = playback or Playback()
    factory = ViewerSite(site, playback, clock or Clock())
    factory.doStart()
    channel = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    transport = StringTransportWithDisconnection(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
    transport.protocol = channel
    channel.makeConnection(transport)
    return channel, transport, playback, factory


def answers(raw: bytes) -> list[tuple[bytes, dict[bytes, bytes], bytes]]:
    """The responses in ``raw``: status line, headers, body (sized or chunked)."""
    out = []
    while raw:
        head, _, raw = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
        if b"content-length" in headers:
            n = int(headers[b"content-length"])
            body, raw = raw[:n], raw[n:]
        elif headers.get(b"transfer-encoding") == b"chunked":
            body = b""
            while True:
                size, _, raw = raw.partition(b"\r\n")
                n = int(size, 16)
                body += raw[:n]
                raw = raw[n + 2:]
                if n == 0:
                    break
        else:
            body, raw = raw, b""
        out.append((lines[0], headers, body))
    return out


def test_requests_on_one_connection_are_answered_in_order_and_kept_alive():
    channel, transport, playback, _ = lane()
    channel.dataReceived(b"GET /live/s/1.m4s HTTP/1.1\r\nHost: x\r\n\r\nGET /live/s/2.m4s HTTP/1.1\r\nHost: x\r\n\r\n")
    got = answers(transport.value())
    assert [(status, body) for status, _, body in got] == [
        (b"HTTP/1.1 200 OK", b"body of /live/s/1.m4s"), (b"HTTP/1.1 200 OK", b"body of /live/s/2.m4s")]
    assert got[0][1][b"content-type"] == b"video/mp4" and b"date" in got[0][1]
    assert transport.connected


def hold(cache: CachingResource, path: bytes, chunks: list[bytes]) -> None:
    """``cache`` holds the whole object ``path`` (its ``chunks``, an immutable segment), born now by its clock."""
    now = cache.clock.seconds()
    obj = CachedObject(path, 200, [(b"content-type", b"video/mp4"), (b"cache-control", IMMUTABLE)])
    obj.chunks, obj.size, obj.complete = chunks, sum(map(len, chunks)), True
    obj.born, obj.expires = now, now + 86400 * 365
    cache.store.put(obj, now)


def holding(clock: Clock, objects: dict[bytes, list[bytes]]) -> CachingResource:
    """A proxy layer's cache holding whole ``objects`` (path: its chunks), 3 s old by ``clock``'s end."""
    cache = CachingResource("pop-proxy", lambda path: Deferred(), clock, CacheSettings())
    for path, chunks in objects.items():
        hold(cache, path, chunks)
    clock.advance(3)
    return cache


def test_a_whole_hit_is_answered_as_a_request_through_the_cache_is():
    clock = Clock()
    cache = holding(clock, {b"/live/s/v/1.m4s": [b"one ", b"two ", b"three"]})
    channel, transport, _, _ = lane(clock, cache)
    counted = (cache.m_requests, cache.m_hits, cache.m_bytes_served)
    before = [counter._value.get() for counter in counted]
    # The first plain, kept alive: the lane's whole hit. The second has a
    # query, so the cache renders it as any request. Both are hits, alike.
    channel.dataReceived(b"GET /live/s/v/1.m4s HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"GET /live/s/v/1.m4s?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    whole, rendered = answers(transport.value())
    assert whole == rendered
    assert whole[0] == b"HTTP/1.1 200 OK" and whole[2] == b"one two three"
    assert whole[1] == {b"content-type": b"video/mp4", b"cache-control": IMMUTABLE, b"x-cache": b"HIT pop-proxy",
                        b"content-length": b"13", b"age": b"3", b"date": whole[1][b"date"]}
    assert [counter._value.get() - was for counter, was in zip(counted, before)] == [2, 2, 26]
    assert transport.connected


class Filling(StringTransportWithDisconnection):
    """A transport full (its producer paused) once it holds 64 KiB more than the test has read."""

    read = 0

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and len(self.value()) - self.read >= 64 * 1024:
            self.producer.pauseProducing()

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def drain(self) -> None:
        self.read = len(self.value())
        if self.producer is not None:
            self.producer.resumeProducing()


def filling_lane(clock: Clock, cache: CachingResource) -> tuple[Any, Filling]:
    channel, _, _, factory = lane(clock, cache)
    channel = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5001))
    transport = Filling()
    transport.protocol = channel
    channel.makeConnection(transport)
    return channel, transport


def test_what_a_whole_hit_could_not_send_at_once_is_read_out_as_the_viewer_reads():
    clock = Clock()
    body = bytes(range(256)) * 1000
    cache = holding(clock, {b"/live/s/v/1.m4s": [body[:100_000], body[100_000:]], b"/live/s/v/2.m4s": [b"next"]})
    channel, transport = filling_lane(clock, cache)
    served = cache.m_bytes_served._value.get()
    channel.dataReceived(b"GET /live/s/v/1.m4s HTTP/1.1\r\n\r\nGET /live/s/v/2.m4s HTTP/1.1\r\n\r\n")
    # No socket under this transport, so nothing leaves at once: a producer
    # reads the body out a piece at a time, paused while the transport is full.
    assert transport.producer is not None and channel.current is not None
    assert len(transport.value()) < 2 * 64 * 1024
    while transport.producer is not None:
        transport.drain()
    first, second = answers(transport.value())
    assert first[2] == body and first[1][b"x-cache"] == b"HIT pop-proxy" and second[2] == b"next"
    assert cache.m_bytes_served._value.get() - served == len(body) + 4


def test_a_whole_hit_to_a_viewer_gone_mid_answer_is_let_go():
    clock = Clock()
    cache = holding(clock, {b"/live/s/v/1.m4s": [b"x" * 200_000]})
    channel, transport = filling_lane(clock, cache)
    channel.dataReceived(b"GET /live/s/v/1.m4s HTTP/1.1\r\n\r\n")
    assert transport.producer is not None and channel.current is not None
    transport.loseConnection()
    assert channel.current is None and not transport.connected
    clock.advance(3600)  # nothing of it is left to fire


def test_an_empty_whole_hit_is_answered_whole_before_the_next():
    clock = Clock()
    cache = holding(clock, {b"/live/s/v/empty.m4s": [], b"/live/s/v/2.m4s": [b"next"]})
    channel, transport, _, _ = lane(clock, cache)
    # No socket under this transport: nothing leaves at once, not even the head.
    channel.dataReceived(b"GET /live/s/v/empty.m4s HTTP/1.1\r\n\r\nGET /live/s/v/2.m4s HTTP/1.1\r\n\r\n")
    empty, after = answers(transport.value())
    assert (empty[0], empty[1][b"content-length"], empty[2]) == (b"HTTP/1.1 200 OK", b"0", b"")
    assert after[2] == b"next" and channel.current is None


def test_thousands_of_pipelined_hits_are_answered_in_order_without_recursing():
    clock = Clock()
    cache = holding(clock, {b"/live/s/v/%d.m4s" % n: [b"%d" % n] for n in range(3)})
    channel, transport, _, _ = lane(clock, cache)
    channel.dataReceived(b"".join(b"GET /live/s/v/%d.m4s HTTP/1.1\r\n\r\n" % (n % 3) for n in range(3000)))
    got = answers(transport.value())
    assert [body for _, _, body in got] == [b"%d" % (n % 3) for n in range(3000)]
    assert channel.current is None and transport.connected


def test_a_request_still_being_answered_holds_the_next_back():
    channel, transport, playback, _ = lane()
    channel.dataReceived(b"GET /live/s/held HTTP/1.1\r\n\r\nGET /live/s/3.m4s HTTP/1.1\r\n\r\n")
    assert playback.seen == [b"/live/s/held"] and transport.value() == b""
    held = playback.held[0]
    finished: list[None] = []
    held.notifyFinish().addCallback(finished.append)
    held.write(b"part one, ")
    held.write(b"part two")
    held.finish()
    assert finished == [None]
    got = answers(transport.value())
    assert [body for _, _, body in got] == [b"part one, part two", b"body of /live/s/3.m4s"]
    assert got[0][1][b"transfer-encoding"] == b"chunked"


def test_connection_close_and_http_1_0_close_after_the_answer():
    for request in (b"GET /live/s/1.m4s HTTP/1.1\r\nConnection: close\r\n\r\n", b"GET /live/s/1.m4s HTTP/1.0\r\n\r\n"):
        channel, transport, playback, _ = lane()
        channel.dataReceived(request)
        (status, headers, body), = answers(transport.value())
        assert body == b"body of /live/s/1.m4s" and headers[b"connection"] == b"close"
        assert not transport.connected


def test_http_1_0_unsized_answer_ends_with_the_connection():
    channel, transport, playback, _ = lane()
    channel.dataReceived(b"GET /live/s/held HTTP/1.0\r\n\r\n")
    playback.held[0].write(b"all of it")
    playback.held[0].finish()
    assert transport.value().endswith(b"\r\n\r\nall of it") and not transport.connected


def test_anything_else_is_handed_to_twisted_web_with_what_was_read():
    channel, transport, playback, _ = lane()
    channel.dataReceived(b"GET /live/s/1.m4s HTTP/1.1\r\n\r\nGET /page HTTP/1.1\r\nHost: x\r\n\r\nGET /live/s/2.m4s HT")
    channel.dataReceived(b"TP/1.1\r\nHost: x\r\n\r\n")
    got = answers(transport.value())
    assert [body for _, _, body in got[:2]] == [b"body of /live/s/1.m4s", b"the page"]
    # twisted.web served the third too: it routed /live (no child here) itself.
    assert got[2][0] == b"HTTP/1.1 404 Not Found" and channel.handed is not None
    assert playback.seen == [b"/live/s/1.m4s"]


def test_a_post_a_head_and_a_get_with_a_body_are_twisted_webs():
    for request in (b"POST /live/s/1.m4s HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                    b"HEAD /live/s/1.m4s HTTP/1.1\r\n\r\n",
                    b"GET /live/s/1.m4s HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
                    b"GET /live/s/1.m4s HTTP/1.1\r\n folded: header\r\n\r\n",
                    b"GET http://x/live/s/1.m4s HTTP/1.1\r\n\r\n"):
        channel, transport, playback, _ = lane()
        channel.dataReceived(request)
        assert channel.handed is not None and playback.seen == [], request


def test_a_head_too_large_is_twisted_webs_to_refuse():
    channel, transport, playback, _ = lane()
    channel.dataReceived(b"GET /live/s/1.m4s HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD + 10))
    assert channel.handed is not None and playback.seen == []


def test_the_query_is_parsed_as_twisted_web_does():
    channel, transport, playback, _ = lane()
    seen = []

    def render(request: Any) -> bytes:
        seen.append((request.path, request.args))
        return b"ok"

    playback.render_GET = render  # type: ignore[method-assign]
    channel.dataReceived(b"GET /live/s/v/playlist.m3u8?_HLS_msn=5&_HLS_part=2&x= HTTP/1.1\r\n\r\n")
    assert seen == [(b"/live/s/v/playlist.m3u8", {b"_HLS_msn": [b"5"], b"_HLS_part": [b"2"], b"x": [b""]})]


def test_a_viewer_gone_mid_answer_is_told():
    channel, transport, playback, _ = lane()
    channel.dataReceived(b"GET /live/s/held HTTP/1.1\r\n\r\n")
    lost: list[Any] = []
    playback.held[0].notifyFinish().addErrback(lost.append)
    transport.loseConnection()
    assert len(lost) == 1 and playback.held[0]._disconnected
    playback.held[0].write(b"too late")  # harmless
    playback.held[0].finish()


def test_idle_connections_are_closed_after_the_sites_timeout_busy_ones_are_not():
    clock = Clock()
    idle, idle_transport, _, factory = lane(clock)
    busy = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5001))
    busy_transport = StringTransportWithDisconnection()
    busy_transport.protocol = busy
    busy.makeConnection(busy_transport)
    busy.dataReceived(b"GET /live/s/held HTTP/1.1\r\n\r\n")
    clock.advance(factory.site.timeOut + 10)
    assert not idle_transport.connected and busy_transport.connected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200) | st.sampled_from(
    [b"GET /live/a/1.m4s HTTP/1.1\r\n", b"\r\n", b"Connection: close\r\n", b"GET /live/a/held HTTP/1.1\r\n\r\n",
     b"Host: x\r\n", b"GET / HTTP/1.1\r\n", b" folded\r\n", b"Content-Length: 2\r\n"]), max_size=12))
def test_any_bytes_leave_the_lane_answering_or_handed_over_never_raising(pieces):
    channel, transport, playback, factory = lane()
    handed = Recorder()
    factory.site.buildProtocol = lambda addr: handed  # what twisted.web then does is its own
    for piece in pieces:
        if not transport.connected:
            break
        channel.dataReceived(piece)
    for request in playback.held:
        request.write(b"x")
        request.finish()
    assert channel.current is None or channel.current in playback.held or not transport.connected
    # Every byte was the lane's to answer, or twisted.web's: none lost, none twice.
    if channel.handed is not None:
        assert b"".join(pieces).endswith(handed.data)


class Recorder(Protocol):
    """Stands for twisted.web's channel: what it was handed."""

    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data
