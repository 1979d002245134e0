"""
The PoP's viewers' HTTP/1.1, with a lane of its own for the playback URLs.

A viewer's connection asks for little but ``GET /live/...``, over and over,
kept alive: each answer from the proxy layer's store, most of them hits.
twisted.web spends most of a cached segment's CPU on what such a request
does not need (parsing each header line as an event, a ``Headers`` object
per request and per response, resource traversal, a Deferred or two, a
timer per request). :class:`ViewerChannel` reads these requests itself: the
request line and headers in one pass over the head, then a
:class:`LaneRequest`, which has what the cache's viewers use of a
twisted.web request (status, headers, write, finish, producers,
``notifyFinish``), rendered by the proxy layer's :class:`CachingResource`.

Everything else (another method, a URL outside ``/live/``, a body, an
absolute URI) is twisted.web's: the first such request hands the connection
over to the site's own ``HTTPChannel``, bytes already read included, for the
rest of its life.

Most of a PoP's answers are hits on a whole segment. For those (a plain
HTTP/1.1 ``GET`` kept alive, no query) the cache hands the lane the object
itself (:meth:`~fbstream.cache.engine.CachingResource.whole_hit`) and the
answer goes out in one gathered system call: a head made once per object,
its ``Age`` and ``Date``, and the object's own chunks, without a viewer, a
body producer or a Deferred. Only what the socket does not take at once is
read out by a :class:`~fbstream.httpbody.BodyProducer` as the client reads,
so a slow client still holds no copy of the object.

Requests are answered one at a time, in order; those that come meanwhile
wait in a bounded buffer. An idle connection is closed after the site's
timeout, as twisted.web does, by one sweep for them all.
"""

from __future__ import annotations

import time
from typing import Any, cast
from urllib.parse import parse_qs

from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, datetimeToString
from twisted.web.server import NOT_DONE_YET, Site

from fbstream.cache.engine import Viewer

#: The most a request head may be (twisted.web's total of header lines).
MAX_HEAD = 16384
#: Bytes of requests to come buffered while one is answered, before the
#: connection stops being read.
MAX_WAITING = 4 * MAX_HEAD
#: Seconds between sweeps for idle connections.
SWEEP = 5.0

#: The most pieces one gathered write hands the socket (the system's IOV_MAX is 1024).
_MAX_PIECES = 512

#: An answer's type when what renders it names none (twisted.web's default).
_DEFAULT_TYPE = b"text/plain; charset=utf-8"

_HEAD_END = b"\r\n\r\n"
_LIVE = b"/live/"
_VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")


class _Date:
    """The ``Date`` header's value, made once a second."""

    def __init__(self) -> None:
        self.second = -1
        self.value = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self.second:
            self.second, self.value = second, datetimeToString(second)
        return self.value


_DATE = _Date()


class _Headers:
    """A request's headers as twisted.web's ``Request.getHeader`` reads them (a name, lower case, its last value)."""

    __slots__ = ("values",)

    def __init__(self, values: dict[bytes, bytes]) -> None:
        self.values = values

    def getRawHeaders(self, name: bytes, default: Any = None) -> list[bytes] | Any:
        value = self.values.get(name.lower())
        return default if value is None else [value]


def status_and_headers(version: bytes, code: int, message: bytes, headers: Any) -> bytes:
    """A response's status line and ``headers`` (name, value pairs), each line ended, the blank line not."""
    lines = [b"%s %d %s\r\n" % (version, code, message)]
    lines.extend(b"%s: %s\r\n" % item for item in headers)
    return b"".join(lines)


class LaneRequest:
    """One ``GET /live/...``: what a cache's viewer writes its answer to."""

    def __init__(self, channel: ViewerChannel, uri: bytes, version: bytes, headers: dict[bytes, bytes]) -> None:
        self.channel = channel
        self.method = b"GET"
        self.uri = uri
        self.clientproto = version
        self.received = headers
        self.requestHeaders = _Headers(headers)
        path, _, query = uri.partition(b"?")
        self.path = path
        self.args: dict[bytes, list[bytes]] = parse_qs(query, keep_blank_values=True) if query else {}
        self.code = 200
        self.code_message = b"OK"
        self.headers: dict[bytes, bytes] = {}
        self.sentLength = 0
        self.started = False
        self.finished = False
        self._disconnected = False
        self._chunked = False
        self._finish_waiters: list[Deferred[None]] | None = None
        connection = headers.get(b"connection", b"").lower()
        if version == b"HTTP/1.1":
            self.persistent = b"close" not in connection
        else:
            self.persistent = b"keep-alive" in connection
        #: Whether a whole object's hit may be answered in one write (see the module's docstring).
        self.plain = self.persistent and version == b"HTTP/1.1" and not query

    # What twisted.web's Request offers and the caches use.
    def getHeader(self, name: bytes) -> bytes | None:
        return self.received.get(name.lower())

    def getClientAddress(self) -> Any:
        return self.channel.transport.getPeer()  # type: ignore[union-attr]

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        self.code = code
        self.code_message = message or RESPONSES.get(code, b"Unknown Status")

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def notifyFinish(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self._finish_waiters is None:
            self._finish_waiters = []
        self._finish_waiters.append(d)
        return d

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.channel.transport.registerProducer(producer, streaming)  # type: ignore[union-attr]

    def unregisterProducer(self) -> None:
        self.channel.transport.unregisterProducer()  # type: ignore[union-attr]

    def _head(self) -> bytes:
        self.started = True
        headers = self.headers
        if b"content-length" not in headers:
            if self.clientproto == b"HTTP/1.1":
                self._chunked = True
                headers[b"transfer-encoding"] = b"chunked"
            else:
                self.persistent = False
        if not self.persistent:
            headers[b"connection"] = b"close"
        headers.setdefault(b"content-type", _DEFAULT_TYPE)
        headers[b"date"] = _DATE.now()
        return status_and_headers(self.clientproto, self.code, self.code_message, headers.items()) + b"\r\n"

    def answer_whole(self, obj: Any, cache: Any) -> None:
        """
        Answer with ``obj``, a whole object ``cache`` holds (a hit): head and
        body handed to the socket at once, the rest, if it does not take it
        all, read out as the client reads.
        """
        head = obj.front_head
        if head is None:
            headers = {name.lower(): value for name, value in cache.answer_headers(obj, b"HIT")}
            headers.setdefault(b"content-type", _DEFAULT_TYPE)
            code = obj.code
            head = obj.front_head = status_and_headers(
                b"HTTP/1.1", code, RESPONSES.get(code, b"Unknown Status"), headers.items())
        head = b"%sage: %d\r\ndate: %s\r\n\r\n" % (head, obj.age(cache.clock.seconds()), _DATE.now())
        self.started = True
        self.code = obj.code
        channel = self.channel
        sent = channel.send_now([head, *obj.chunks])
        body_sent = max(0, sent - len(head))
        self.sentLength = body_sent
        if body_sent:
            cache.m_bytes_served.inc(body_sent)
        if sent >= len(head) + obj.size:
            self.finish()
            return
        if sent < len(head):
            channel.transport.write(head[sent:])  # type: ignore[union-attr]
        Viewer(cache, cast(Any, self), b"HIT").stream(obj, skip=body_sent)

    def write(self, data: bytes) -> None:
        if self._disconnected or self.finished:
            return
        send = self.channel.send
        self.sentLength += len(data)
        if not self.started:
            head = self._head()
            if self._chunked and data:
                send([head, b"%x\r\n" % (len(data),), data, b"\r\n"])
            else:
                send([head, data])
        elif self._chunked:
            if data:
                send([b"%x\r\n" % (len(data),), data, b"\r\n"])
        elif data:
            send([data])

    def finish(self) -> None:
        if self._disconnected or self.finished:
            return
        if not self.started:
            self.headers.setdefault(b"content-length", b"0")
            self.write(b"")
        if self._chunked:
            self.channel.send([b"0\r\n\r\n"])
        self.finished = True
        self.channel.site.log(cast(Any, self))
        self._notify(None)
        self.channel.request_done(self)

    def connection_lost(self, reason: Failure) -> None:
        self._disconnected = True
        if not self.finished:
            self._notify(reason)

    def _notify(self, result: Failure | None) -> None:
        waiters, self._finish_waiters = self._finish_waiters, None
        for d in waiters or ():
            if result is None:
                d.callback(None)
            else:
                d.errback(result)


class ViewerChannel(Protocol):
    """A viewer's connection: ``GET /live/...`` in the lane, the rest handed to twisted.web."""

    def __init__(self, factory: ViewerSite, addr: Any) -> None:
        self.factory = factory
        self.site = factory.site
        self.addr = addr
        self.buffer = b""
        self.current: LaneRequest | None = None
        self.handed: Any = None  # twisted.web's HTTPChannel, once handed over
        self.last_active = 0.0
        self._paused = False
        self._answering = False
        self.raw: tcp.Connection | None = None

    def connectionMade(self) -> None:
        self.last_active = self.factory.clock.seconds()
        self.factory.open.add(self)
        # The TCP connection under the limits' wrapper, if that is what it is
        # (not TLS): what send() may write to directly.
        raw = self.transport if isinstance(self.transport, tcp.Connection) else getattr(self.transport, "transport", None)
        self.raw = raw if isinstance(raw, tcp.Connection) else None

    def send_now(self, pieces: list[bytes]) -> int:
        """
        Write ``pieces`` straight to the socket, gathered, if nothing waits
        in the transport before them: the bytes it took at once (0 when
        something waits, or the connection is not a plain TCP one).
        """
        raw = self.raw
        if (raw is not None and raw.connected and not raw.disconnecting and not raw._writeDisconnected
                and not raw._tempDataBuffer and raw.offset == len(raw.dataBuffer)):
            try:
                return raw.socket.sendmsg(pieces[:_MAX_PIECES])
            except (BlockingIOError, InterruptedError):
                return 0
            except OSError:
                return 0  # the transport finds the error when it writes
        return 0

    def send(self, pieces: list[bytes]) -> None:
        """
        Write ``pieces``: straight to the socket when nothing waits before
        them (most answers then leave in one system call, without Twisted's
        copy of them into its buffer and its wait for the next turn of the
        reactor); what the socket does not take, and everything when
        something waits, through the transport, which pauses a producer
        when it is full.
        """
        sent = self.send_now(pieces)
        if sent:
            if sent >= sum(len(piece) for piece in pieces):
                return
            pieces = [b"".join(pieces)[sent:]]
        self.transport.writeSequence(pieces)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self.handed is not None:
            self.handed.dataReceived(data)
            return
        self.last_active = self.factory.clock.seconds()
        self.buffer += data
        if self.current is None:
            self._next()
        elif len(self.buffer) > MAX_WAITING and not self._paused:
            self._paused = True
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def _next(self) -> None:
        """Answer the requests buffered, one at a time, until one is still being answered."""
        if self._answering:
            return  # a request answered at once, inside the loop below: it goes on
        self._answering = True
        try:
            while self.current is None and self.handed is None and self.transport is not None:
                end = self.buffer.find(_HEAD_END, 0, MAX_HEAD + 4)
                if end < 0:
                    if len(self.buffer) > MAX_HEAD:
                        self._hand_over()  # twisted.web answers a head too large
                    return
                request = self._parse(self.buffer[:end])
                if request is None:
                    self._hand_over()
                    return
                self.buffer = self.buffer[end + 4:]
                self.current = request
                self._render(request)
        finally:
            self._answering = False

    def _parse(self, head: bytes) -> LaneRequest | None:
        """The lane's request for ``head``, or None if it is not one for the lane."""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or parts[0] != b"GET" or not parts[1].startswith(_LIVE) or parts[2] not in _VERSIONS:
            return None
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name[-1:] in (b" ", b"\t") or name[:1] in (b" ", b"\t"):
                return None  # malformed, or folded: twisted.web says so
            headers[name.lower()] = value.strip()
        if b"content-length" in headers or b"transfer-encoding" in headers:
            return None  # a GET with a body
        return LaneRequest(self, parts[1], parts[2], headers)

    def _render(self, request: LaneRequest) -> None:
        playback = self.factory.playback
        try:
            if request.plain:
                obj = playback.whole_hit(request.path, self)
                if obj is not None:
                    request.answer_whole(obj, playback)
                    return
            body = playback.render_GET(request)  # type: ignore[arg-type]
        except Exception:
            self.factory.log_failure()
            if request.started:  # too late for a 500: cut the answer short, as a broken body is
                self.transport.abortConnection()  # type: ignore[union-attr]
                return
            request.setResponseCode(500)
            request.headers.clear()
            body = b"internal error\n"
        if body is not NOT_DONE_YET:
            assert isinstance(body, bytes)
            request.setHeader(b"content-length", b"%d" % (len(body),))
            request.write(body)
            request.finish()

    def request_done(self, request: LaneRequest) -> None:
        if request is not self.current:
            return
        self.current = None
        self.last_active = self.factory.clock.seconds()
        if not request.persistent:
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]
        if self.buffer:
            self._next()

    def _hand_over(self) -> None:
        """twisted.web's, from here on: a site's channel on this transport, fed what is buffered."""
        channel = self.site.buildProtocol(self.addr)
        self.handed = channel
        self.factory.open.discard(self)
        channel.makeConnection(self.transport)
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]
        data, self.buffer = self.buffer, b""
        if data:
            channel.dataReceived(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008 (IProtocol's signature)
        self.factory.open.discard(self)
        if self.handed is not None:
            self.handed.connectionLost(reason)
            return
        if self.current is not None:
            self.current.connection_lost(reason)
            self.current = None


class ViewerSite(Factory):
    """
    ``site`` with the lane for ``playback`` (the proxy layer's cache at
    ``/live``): what a PoP's viewers' listener serves.
    """

    protocol = ViewerChannel  # type: ignore[assignment]
    log = Logger()

    def __init__(self, site: Site, playback: Any, clock: Any) -> None:
        self.site = site
        self.playback = playback
        self.clock = clock
        self.open: set[ViewerChannel] = set()
        self._sweeper: LoopingCall | None = None

    def buildProtocol(self, addr: Any) -> ViewerChannel:
        return ViewerChannel(self, addr)

    def startFactory(self) -> None:
        self.site.doStart()
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = self.clock
        self._sweeper.start(SWEEP, now=False)

    def stopFactory(self) -> None:
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self.site.doStop()

    def _sweep(self) -> None:
        """Close the connections idle (between requests) longer than the site's timeout."""
        timeout = self.site.timeOut
        if not timeout:
            return
        before = self.clock.seconds() - timeout
        for channel in [c for c in self.open if c.current is None and c.last_active < before]:
            channel.transport.loseConnection()  # type: ignore[union-attr]

    def log_failure(self) -> None:
        self.log.failure("the playback lane failed to render a request")

