"""
The simulated viewer's connection: HTTP/1.1 kept alive, one request at a
time, as lean as a client can be in Python, because an agent runs thousands
of them. A body is counted, not kept (but for a manifest, which the viewer
reads); ``Content-Length``, chunked and read-to-close bodies are read, and
a connection the server closed is made again for the next request.

twisted.web's ``Agent`` would do all this at several times the CPU per
request, and the agent's figures are only right while its own CPU has room.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure

#: A response's status line and headers may take this much at most.
MAX_HEAD = 64 * 1024
#: A chunk-size line may take this much at most.
MAX_LINE = 1024
#: A kept body (a manifest) may take this much at most.
MAX_KEPT = 4 * 1024 * 1024

_MAX_AGE = re.compile(rb"max-age=(\d{1,9})")
#: The statuses that send a client elsewhere, and how many of them one request follows.
REDIRECTS = frozenset((301, 302, 303, 307, 308))
MAX_REDIRECTS = 5


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 this client reads."""


class Answer:
    """What came back: the status, the body's size (and the body, if kept), and when."""

    __slots__ = ("body", "max_age", "seconds", "size", "status", "ttfb")

    def __init__(self, status: int, size: int, body: bytes | None, ttfb: float, seconds: float,
                 max_age: float) -> None:
        self.status = status
        self.size = size
        self.body = body
        self.ttfb = ttfb
        self.seconds = seconds
        self.max_age = max_age


class ResponseReader:
    """
    One response, parsed as its bytes come (sans-IO): :meth:`feed` returns
    the bytes after its end (the next response's, which a client asking one
    at a time never gets), or None while it is not over.
    """

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.head = b""
        self.status = 0
        self.max_age = 0.0
        self.location = b""
        self.size = 0
        self.body: list[bytes] | None = [] if keep else None
        self.close = False
        #: "head", "length", "chunk-size", "chunk", "chunk-end", "trailer", "to-close", "done"
        self.state = "head"
        self.remaining = 0
        self.line = b""

    def feed(self, data: bytes) -> bytes | None:
        while data and self.state != "done":
            data = getattr(self, "_" + self.state.replace("-", "_"))(data)
        return bytes(data) if self.state == "done" else None

    def closed(self) -> bool:
        """The connection closed: whether that ends this response whole."""
        if self.state == "to-close":
            self.state = "done"
        return self.state == "done"

    def _head(self, data: bytes) -> bytes:
        if self.head:  # a head split across reads (rare): the whole of it
            data, self.head = self.head + data, b""
        end = data.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
        if end < 0:
            if len(data) > MAX_HEAD:
                raise ProtocolError("a response head over %d bytes" % (MAX_HEAD,))
            self.head = bytes(data)
            return b""
        head = data[:end]
        # The body that came with the head, not copied (most of a segment
        # comes in the read its head does); bytes where it is parsed or kept.
        rest: Any = memoryview(data)[end + 4:]
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit() or len(parts[1]) != 3:
            raise ProtocolError("not an HTTP/1.1 status line: %r" % (lines[0][:80],))
        self.status = int(parts[1])
        length, chunked = None, False
        self.close = parts[0] == b"HTTP/1.0"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip()
            if name == b"content-length":
                if not value.isdigit() or len(value) > 15:
                    raise ProtocolError("a Content-Length of %r" % (value[:40],))
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = value.lower().endswith(b"chunked")
            elif name == b"cache-control":
                match = _MAX_AGE.search(value)
                if match is not None:
                    self.max_age = float(match.group(1))
            elif name == b"connection":
                self.close = self.close or value.lower() == b"close"
            elif name == b"location":
                self.location = value
        if self.status in (204, 304) or 100 <= self.status < 200:
            self.state = "done"
        elif chunked:
            self.state = "chunk-size"
        elif length is not None:
            self.remaining = length
            self.state = "length" if length else "done"
        else:
            self.state, self.close = "to-close", True
        return rest if self.state == "length" and self.body is None else bytes(rest)

    def _take(self, data: bytes, n: int) -> None:
        self.size += n
        if self.body is not None:
            if self.size > MAX_KEPT:
                raise ProtocolError("a kept body over %d bytes" % (MAX_KEPT,))
            self.body.append(data[:n] if n < len(data) else data)

    def _counted(self, data: bytes, then: str) -> bytes:
        """Take what is left of a body (or chunk) of known length; past its end, go on to ``then``."""
        n = min(len(data), self.remaining)
        self._take(data, n)
        self.remaining -= n
        if not self.remaining:
            self.state = then
        return data[n:]

    def _length(self, data: bytes) -> bytes:
        return self._counted(data, "done")

    def _to_close(self, data: bytes) -> bytes:
        self._take(data, len(data))
        return b""

    def _line(self, data: bytes) -> tuple[bytes | None, bytes]:
        end = data.find(b"\n")
        if end < 0:
            self.line += data
            if len(self.line) > MAX_LINE:
                raise ProtocolError("a chunk-size line over %d bytes" % (MAX_LINE,))
            return None, b""
        line, self.line = (self.line + data[:end]).rstrip(b"\r"), b""
        return line, data[end + 1:]

    def _chunk_size(self, data: bytes) -> bytes:
        line, rest = self._line(data)
        if line is None:
            return rest
        size = line.split(b";", 1)[0].strip()
        try:
            self.remaining = int(size, 16)
        except ValueError:
            raise ProtocolError("a chunk size of %r" % (size[:40],)) from None
        if self.remaining < 0 or len(size) > 15:
            raise ProtocolError("a chunk size of %r" % (size[:40],))
        self.state = "chunk" if self.remaining else "trailer"
        return rest

    def _chunk(self, data: bytes) -> bytes:
        return self._counted(data, "chunk-end")

    def _chunk_end(self, data: bytes) -> bytes:
        if not b"\r\n".startswith((self.line + data)[:2]):
            raise ProtocolError("a chunk not followed by CRLF")
        line, rest = self._line(data)
        if line is None:
            return rest
        if line:
            raise ProtocolError("a chunk not followed by CRLF")
        self.state = "chunk-size"
        return rest

    def _trailer(self, data: bytes) -> bytes:
        line, rest = self._line(data)
        if line is None:
            return rest
        if not line:
            self.state = "done"
        return rest


class _Connection(Protocol):
    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.setTcpNoDelay(True)
        self.channel._connected(self)

    def dataReceived(self, data: bytes) -> None:
        self.channel._data(self, data)

    def connectionLost(self, reason: Failure = Failure(Exception("lost"))) -> None:  # noqa: B008
        self.channel._lost(self)


class _Factory(ClientFactory):
    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def buildProtocol(self, addr: Any) -> _Connection:
        return _Connection(self.channel)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.channel._failed()


class Channel:
    """
    One viewer's kept-alive connection to ``host:port``, from ``source``
    (an address of this host; None: any): :meth:`get` one path at a time;
    ``answered`` is called with an :class:`Answer`, or with None when there
    was none (the connection failed, or the answer was broken).

    A redirect to an ``http://`` URL is followed, as a player follows one:
    the channel moves to that host for good (a player's base URL becomes
    the redirect's), and the request is made there, up to
    :data:`MAX_REDIRECTS` times.
    """

    def __init__(self, reactor: Any, host: str, port: int, answered: Callable[[Answer | None], None],
                 source: str | None = None) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.source = source
        self.answered = answered
        #: Redirects followed, and those of the request going on.
        self.redirects = 0
        self._hops = 0
        self.connection: _Connection | None = None
        self.connecting = False
        self.request = b""
        self.reader: ResponseReader | None = None
        self.sent = 0.0
        self.first = 0.0
        self.connections = 0
        #: Whether the request was written on a connection kept alive from an
        #: earlier one (which the server may have closed as it was sent).
        self.reused = False

    def get(self, path: str, keep: bool = False) -> None:
        self._hops = 0
        self._ask(path, keep)

    def _ask(self, path: str, keep: bool) -> None:
        self.request = b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: fbstream-load\r\n\r\n" % (
            path.encode(), self.host.encode())
        self.reader = ResponseReader(keep)
        self.sent = self.reactor.seconds()
        self.first = 0.0
        self.reused = self.connection is not None
        if self.connection is not None:
            self.connection.transport.write(self.request)  # type: ignore[union-attr]
        else:
            self._connect()

    def _connect(self) -> None:
        if not self.connecting:
            self.connecting = True
            self.connections += 1
            self.reactor.connectTCP(self.host, self.port, _Factory(self),
                                    bindAddress=(self.source, 0) if self.source else None)

    def close(self) -> None:
        self.reader = None
        if self.connection is not None:
            self.connection.transport.loseConnection()  # type: ignore[union-attr]

    def _connected(self, connection: _Connection) -> None:
        self.connecting = False
        self.connection = connection
        if self.reader is not None:
            connection.transport.write(self.request)  # type: ignore[union-attr]

    def _failed(self) -> None:
        self.connecting = False
        self._over(None)

    def _data(self, connection: _Connection, data: bytes) -> None:
        reader = self.reader
        if reader is None:
            connection.transport.loseConnection()  # type: ignore[union-attr]
            return
        now = self.reactor.seconds()
        if not self.first:
            self.first = now
        try:
            rest = reader.feed(data)
        except ProtocolError:
            self.connection = None
            connection.transport.loseConnection()  # type: ignore[union-attr]
            self._over(None)
            return
        if rest is None:
            return
        if reader.close or rest:
            self.connection = None
            connection.transport.loseConnection()  # type: ignore[union-attr]
        if reader.status in REDIRECTS and reader.location and self._follow(reader):
            return
        self._over(self._answer(reader, now))

    def _lost(self, connection: _Connection) -> None:
        if connection is not self.connection:
            return
        self.connection = None
        reader = self.reader
        if reader is None:
            return
        if reader.closed():
            if reader.status in REDIRECTS and reader.location and self._follow(reader):
                return
            self._over(self._answer(reader, self.reactor.seconds()))
        elif self.reused and reader.state == "head" and not reader.head:
            # A kept-alive connection the server closed as the request went
            # out: asked again on a new one, as any HTTP client does.
            self.reused = False
            self._connect()
        else:
            self._over(None)

    def _follow(self, reader: ResponseReader) -> bool:
        """Whether the redirect ``reader`` read is followed (to an http:// URL, within the hops allowed)."""
        url = urlsplit(reader.location.decode("latin-1"))
        if self._hops >= MAX_REDIRECTS or url.scheme != "http" or not url.hostname:
            return False
        try:
            port = url.port or 80
        except ValueError:
            return False
        self._hops += 1
        self.redirects += 1
        if (url.hostname, port) != (self.host, self.port):
            if self.connection is not None:
                self.connection.transport.loseConnection()  # type: ignore[union-attr]
                self.connection = None
            self.host, self.port = url.hostname, port
        self._ask(urlunsplit(("", "", url.path or "/", url.query, "")), reader.keep)
        return True

    def _answer(self, reader: ResponseReader, now: float) -> Answer:
        body = b"".join(reader.body) if reader.body is not None else None
        return Answer(reader.status, reader.size, body, (self.first or now) - self.sent, now - self.sent,
                      reader.max_age)

    def _over(self, answer: Answer | None) -> None:
        self.reader = None
        self.answered(answer)
