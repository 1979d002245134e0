"""
The push channel's sans-IO core: one HTTP/2 connection between a cache tier
(the subscriber) and its upstream (the publisher), on python-hyper's ``h2``.
Bytes in, events and bytes out; no transport, no reactor, no clock of its
own (whoever drives it passes the time).

The conversation:

- The subscriber opens the connection with ``ENABLE_PUSH`` on and windows
  sized for segments (:attr:`ChannelSettings.window`).
- It subscribes to a live stream with ``GET /push/v1/live/<id>`` (with
  ``authorization: Bearer <secret>`` when the publisher has a secret). The
  publisher answers ``200`` and never ends that response: it is the parent
  stream of every push for that live stream. ``401`` is a wrong or missing
  secret, ``400`` a path that names no stream; those end at once.
- For every new object of the stream (a manifest or playlist version, an
  init segment, a segment from its first chunk on) the publisher sends a
  ``PUSH_PROMISE`` carrying the GET a viewer would make (``:path`` is the
  playback URL), then the response a GET would get: the same status and
  headers, and the body as it grows, ended when the object is complete.
- The subscriber unsubscribes by resetting the parent stream (``CANCEL``),
  and refuses a push it does not want by resetting it.
- Either side pings; a connection whose pings go unanswered for
  :attr:`ChannelSettings.ping_timeout` is dead.
- The publisher sends ``GOAWAY`` when its stream ids run out
  (:attr:`ChannelSettings.last_stream_id`) and closes the connection (h2
  reads nothing after a GOAWAY); the subscriber reconnects at once.

Any frame ``h2`` rejects, and anything else this conversation does not
allow, ends the connection with ``GOAWAY`` and a :class:`Closed` event that
says why; nothing outside that connection is touched.

The publisher never buffers a body: :meth:`Publisher.room` says how many
bytes a push may send now (the peer's flow-control windows, less what is
already waiting in the transport, as the caller measures it), and the
caller hands it no more than that, reading the rest from its shared copy of
the body later (as :class:`~fbstream.httpbody.BodyProducer` does).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable
from typing import Any

import attrs
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
import hpack
from hpack import NeverIndexedHeaderTuple
from hyperframe.frame import Frame, PushPromiseFrame, RstStreamFrame

from fbstream.live.urls import PLAYBACK_PATH, STREAM_ID

#: The subscription path's prefix; the stream id follows.
SUBSCRIBE = b"/push/v1/live/"
#: The content type of a subscription's never-ending response.
SUBSCRIPTION_TYPE = b"application/x-fbstream-push"
#: The header that carries, from the first hop on, when the object's version
#: was made (Unix seconds), for the push-lag histogram.
MADE_HEADER = b"x-fbstream-made"
#: Headers a pushed request or response may carry at most (bytes, in all).
MAX_HEADER_BYTES = 16 * 1024


def made_at(headers: Iterable[tuple[bytes, bytes]]) -> float:
    """When a pushed object's version was made, as its :data:`MADE_HEADER` says (0: it does not)."""
    for name, value in headers:
        if name == MADE_HEADER:
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 0.0


@attrs.frozen
class ChannelSettings:
    """How one push connection is sized and watched (the ``push.*`` settings)."""

    #: The receiver's window, per stream and for the connection: a whole
    #: segment at the top rendition fits, so a push never waits on a
    #: WINDOW_UPDATE round trip.
    window: int = 8 * 1024 * 1024
    #: Pushes open at once on one connection (the subscriber's
    #: MAX_CONCURRENT_STREAMS; the publisher also holds itself to it).
    max_pushes: int = 256
    #: Subscriptions one connection may hold.
    max_subscriptions: int = 10_000
    #: Seconds between pings, and without an answer before the peer is dead.
    ping_interval: float = 1.0
    ping_timeout: float = 4.0
    #: The highest stream id the publisher promises before GOAWAY (h2's
    #: limit is 2**31 - 1; tests lower it).
    last_stream_id: int = 2**31 - 1 - 2**16


# Events -----------------------------------------------------------------------


@attrs.frozen
class Subscribed:
    """Publisher side: the peer subscribed to ``stream``."""

    stream: str


@attrs.frozen
class Unsubscribed:
    """Publisher side: the peer left ``stream`` (or the connection ended)."""

    stream: str


@attrs.frozen
class PushCancelled:
    """Publisher side: the peer reset push ``push_id`` (refused, or no longer wanted)."""

    push_id: int


@attrs.frozen
class Writable:
    """Publisher side: windows opened; pushes waiting for room may send again."""


@attrs.frozen
class Accepted:
    """Subscriber side: the publisher took the subscription to ``stream``."""

    stream: str


@attrs.frozen
class Rejected:
    """Subscriber side: the subscription to ``stream`` was refused or ended."""

    stream: str
    code: int


@attrs.frozen
class PushStarted:
    """Subscriber side: a pushed response's status and headers."""

    push_id: int
    stream: str
    path: bytes
    code: int
    headers: list[tuple[bytes, bytes]]


@attrs.frozen
class PushData:
    push_id: int
    data: bytes


@attrs.frozen
class PushEnded:
    """Subscriber side: the pushed body is complete."""

    push_id: int


@attrs.frozen
class PushReset:
    """Subscriber side: the pushed body will never be complete."""

    push_id: int


@attrs.frozen
class GoingAway:
    """The peer will accept no new streams: reconnect (the subscriber) or stop."""

    #: 0 (NO_ERROR): an orderly goodbye, such as stream ids running out.
    code: int = 0


@attrs.frozen
class Closed:
    """The connection is over (a protocol error, a dead peer, GOAWAY): why."""

    reason: str


Event = (Subscribed | Unsubscribed | PushCancelled | Writable | Accepted | Rejected | PushStarted | PushData
         | PushEnded | PushReset | GoingAway | Closed)


class _H2Connection(h2.connection.H2Connection):
    """
    h2's connection, mended on one point of RFC 9113 section 5.1: a
    PUSH_PROMISE received on a stream we have reset (a subscription left
    while a push of it was on its way) still reserves the promised stream,
    whose frames are then dropped. h2 refuses the promise without reserving
    it, so it takes the pushed response that follows for a request the
    publisher opened, and the whole connection ends in a protocol error.
    """

    def _receive_push_promise_frame(self, frame: PushPromiseFrame) -> tuple[list[Frame], list[h2.events.Event]]:
        frames, events = super()._receive_push_promise_frame(frame)
        promised = frame.promised_stream_id
        if promised not in self.streams and any(isinstance(f, RstStreamFrame) and f.stream_id == promised
                                                for f in frames):
            # Reserved, and reset by us: what follows on it is a stream error, answered and dropped.
            self.highest_inbound_stream_id = max(self.highest_inbound_stream_id, promised)
            self._closed_streams[promised] = h2.stream.StreamClosedBy.SEND_RST_STREAM
        return frames, events


class _PlainEncoder(hpack.Encoder):
    """
    HPACK without Huffman coding: a push's literals (its path, its stamps)
    cost a few bytes more on the wire and nothing to code, where hpack's
    pure-Python Huffman code, both ways, was a third of a push's cost.
    """

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        return super().encode(headers, huffman=False)


class _Connection:
    """
    What both ends share: the h2 connection, pings, and closing with a reason.

    What we receive is checked as h2 checks any peer's headers. What we send
    is not checked again on the way out (the publisher's headers are a
    cache's stored ones, made by us or received through this same check,
    and :func:`_outbound` keeps them so): h2's checks of outbound headers
    were a third of the cost of a push.
    """

    def __init__(self, client_side: bool, settings: ChannelSettings) -> None:
        self.settings = settings
        self.h2 = _H2Connection(h2.config.H2Configuration(
            client_side=client_side, header_encoding=None, validate_inbound_headers=True,
            validate_outbound_headers=False, normalize_outbound_headers=False,
        ))
        self.h2.encoder = _PlainEncoder()
        self.closed: str | None = None
        self._ping_sent: float | None = None
        self._ping_data = b""
        self._last_ping = 0.0

    def data_to_send(self) -> bytes:
        return self.h2.data_to_send()

    def receive(self, data: bytes) -> list[Event]:
        """Bytes from the peer: what they mean, in order."""
        if self.closed is not None:
            return []
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            return self._close(h2.errors.ErrorCodes.PROTOCOL_ERROR, "protocol error: %s" % (e,))
        out: list[Event] = []
        for event in events:
            if isinstance(event, h2.events.PingAckReceived):
                if event.ping_data == self._ping_data:
                    self._ping_sent = None
            elif isinstance(event, h2.events.ConnectionTerminated):
                # h2 takes no frame after a GOAWAY: what was in flight is
                # cut, and the subscriber reconnects at once.
                out.append(GoingAway(int(event.error_code or 0)))
                out.extend(self._closed("the peer closed the connection (GOAWAY %s)"
                                        % (_error_name(event.error_code),)))
                break
            else:
                try:
                    out.extend(self._event(event))
                except _Hostile as e:
                    out.extend(self._close(h2.errors.ErrorCodes.PROTOCOL_ERROR, str(e)))
                    break
                except h2.exceptions.ProtocolError as e:
                    out.extend(self._close(h2.errors.ErrorCodes.INTERNAL_ERROR, "protocol error: %s" % (e,)))
                    break
            if self.closed is not None:
                break
        return out

    def tick(self, now: float) -> list[Event]:
        """Called now and then: ping the peer, and give it up if it has not answered."""
        if self.closed is not None:
            return []
        if self._ping_sent is not None:
            if now - self._ping_sent > self.settings.ping_timeout:
                return self._close(h2.errors.ErrorCodes.NO_ERROR, "the peer did not answer a ping for %.1f s"
                                   % (now - self._ping_sent,))
            return []
        if now - self._last_ping >= self.settings.ping_interval:
            self._last_ping = self._ping_sent = now
            self._ping_data = os.urandom(8)
            try:
                self.h2.ping(self._ping_data)
            except h2.exceptions.ProtocolError as e:
                return self._close(h2.errors.ErrorCodes.INTERNAL_ERROR, "protocol error: %s" % (e,))
        return []

    def close(self, reason: str) -> list[Event]:
        """End the connection on our side (GOAWAY, no error)."""
        return self._close(h2.errors.ErrorCodes.NO_ERROR, reason)

    def _close(self, code: h2.errors.ErrorCodes, reason: str) -> list[Event]:
        if self.closed is None:
            try:
                self.h2.close_connection(code)
            except h2.exceptions.ProtocolError:
                pass  # already closed by h2 itself
        return self._closed(reason)

    def _closed(self, reason: str) -> list[Event]:
        if self.closed is not None:
            return []
        self.closed = reason
        return self._on_closed() + [Closed(reason)]

    def _event(self, event: h2.events.Event) -> list[Event]:
        raise NotImplementedError

    def _on_closed(self) -> list[Event]:
        return []


class _Hostile(Exception):
    """The peer did something this conversation does not allow."""


def _error_name(code: object) -> str:
    return getattr(code, "name", str(code))


#: Headers no push may carry: HTTP/1.1's hop-by-hop ones (RFC 9113 section 8.2.2).
_HOP_BY_HOP = frozenset([b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
                         b"te", b"host"])
#: Header names whose value changes from one push to the next. HPACK sends
#: them as literals never put in the connection's table: each would take a
#: place there only to be pushed out unused, and every header's lookup walks
#: the table.
_VOLATILE = frozenset([b":path", MADE_HEADER, b"x-fbstream-hls-edge", b"date", b"age", b"last-modified", b"etag",
                       b"expires", b"content-length", b"content-range"])


def _outbound(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Headers as a push sends them: lower-case names, no hop-by-hop ones, volatile values never indexed."""
    out: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        name = name.lower()
        if name in _HOP_BY_HOP:
            continue
        out.append(NeverIndexedHeaderTuple(name, value) if name in _VOLATILE else (name, value))
    return out


def _headers_size(headers: Iterable[tuple[bytes, bytes]]) -> int:
    return sum(len(n) + len(v) for n, v in headers)


class Publisher(_Connection):
    """
    The upstream's end of one subscriber's connection.

    :param secret: the bearer token subscribers must present (None: any).
    """

    def __init__(self, settings: ChannelSettings = ChannelSettings(), secret: bytes | None = None,
                 authority: bytes = b"fbstream") -> None:
        super().__init__(client_side=False, settings=settings)
        self.secret = secret
        self.authority = authority
        #: Parent h2 stream of each subscription, and the reverse.
        self.parents: dict[str, int] = {}
        self._streams: dict[int, str] = {}
        #: Open pushes: h2 stream id -> the live stream it belongs to.
        self.pushes: dict[int, str] = {}
        self.going_away = False

    def start(self) -> None:
        """Send our SETTINGS: as many subscriptions as we take, in force from the first frame."""
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.settings.max_subscriptions + 16,
        })
        self.h2.initiate_connection()

    def can_push(self, stream: str) -> bool:
        """Whether a new push for ``stream`` would be promised now."""
        if self.closed is not None or self.going_away or stream not in self.parents:
            return False
        limit = min(self.settings.max_pushes, self.h2.remote_settings.max_concurrent_streams)
        return len(self.pushes) < limit and self.h2.remote_settings.enable_push == 1

    def push(self, stream: str, path: bytes, code: int, headers: list[tuple[bytes, bytes]]) -> int | None:
        """
        Promise ``path`` on ``stream``'s subscription and send the response's
        status and headers. Returns the push's id, or None if it cannot be
        pushed now (not subscribed, too many open, going away).
        """
        if not self.can_push(stream):
            return None
        promised = self.h2.get_next_available_stream_id()
        if promised > self.settings.last_stream_id:
            # GOAWAY: the subscriber reconnects, on fresh stream ids.
            self.going_away = True
            self._close(h2.errors.ErrorCodes.NO_ERROR, "the push stream ids ran out")
            return None
        request = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", self.authority),
                   NeverIndexedHeaderTuple(b":path", path)]
        self.h2.push_stream(self.parents[stream], promised, request)
        response = [(b":status", b"%d" % (code,))] + _outbound(h for h in headers if not h[0].startswith(b":"))
        self.h2.send_headers(promised, response)
        self.pushes[promised] = stream
        return promised

    def room(self, push_id: int) -> int:
        """The body bytes push ``push_id`` may send now (its and the connection's windows)."""
        if self.closed is not None or push_id not in self.pushes:
            return 0
        return max(0, self.h2.local_flow_control_window(push_id))

    def send(self, push_id: int, data: bytes, end: bool = False) -> None:
        """Send body bytes (no more than :meth:`room`), and end the body if ``end``."""
        if self.closed is not None or push_id not in self.pushes:
            return
        frame = self.h2.max_outbound_frame_size
        if len(data) <= frame:
            # Most pushes: one frame, the end on it if it is the last.
            if data or end:
                self.h2.send_data(push_id, data, end_stream=end)
        else:
            view = memoryview(data)
            starts = range(0, len(data), frame)
            for start in starts:
                self.h2.send_data(push_id, view[start:start + frame].tobytes(), end_stream=end and start == starts[-1])
        if end:
            del self.pushes[push_id]

    def cancel(self, push_id: int) -> None:
        """Give a push up (its body will never be complete, or the peer cannot keep up)."""
        if self.pushes.pop(push_id, None) is not None and self.closed is None:
            self.h2.reset_stream(push_id, h2.errors.ErrorCodes.CANCEL)

    def _event(self, event: h2.events.Event) -> list[Event]:
        if isinstance(event, h2.events.RequestReceived):
            return self._request(event.stream_id, event.headers or [])
        if isinstance(event, h2.events.DataReceived):
            raise _Hostile("a request body on stream %d: subscriptions have none" % (event.stream_id,))
        if isinstance(event, h2.events.StreamReset):
            if event.stream_id in self.pushes:
                del self.pushes[event.stream_id]
                return [PushCancelled(event.stream_id)]
            stream = self._streams.pop(event.stream_id, None)
            if stream is not None:
                del self.parents[stream]
                return [Unsubscribed(stream)]
            return []
        if isinstance(event, h2.events.StreamEnded):
            return []  # a subscription's request has no body; its end changes nothing
        if isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged) and self.pushes:
            return [Writable()]
        return []

    def _request(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> list[Event]:
        if _headers_size(headers) > MAX_HEADER_BYTES:
            raise _Hostile("a request's headers are over %d bytes" % (MAX_HEADER_BYTES,))
        fields = dict(headers)
        path = fields.get(b":path", b"")
        if fields.get(b":method") != b"GET" or not path.startswith(SUBSCRIBE):
            self._answer(stream_id, 404, b"not a push subscription\n")
            return []
        if self.secret is not None and not hmac.compare_digest(
                fields.get(b"authorization", b""), b"Bearer " + self.secret):
            self._answer(stream_id, 401, b"a push subscription needs the channel's secret\n")
            return []
        stream = path[len(SUBSCRIBE):]
        if not STREAM_ID.match(stream):
            self._answer(stream_id, 400, b"not a stream id\n")
            return []
        name = stream.decode()
        if name in self.parents or len(self.parents) >= self.settings.max_subscriptions:
            self._answer(stream_id, 409 if name in self.parents else 503,
                         b"already subscribed\n" if name in self.parents else b"too many subscriptions\n")
            return []
        self.parents[name] = stream_id
        self._streams[stream_id] = name
        self.h2.send_headers(stream_id, [(b":status", b"200"), (b"content-type", SUBSCRIPTION_TYPE),
                                         (b"cache-control", b"no-store")])
        return [Subscribed(name)]

    def _answer(self, stream_id: int, code: int, body: bytes) -> None:
        self.h2.send_headers(stream_id, [(b":status", b"%d" % (code,)), (b"content-type", b"text/plain"),
                                         (b"content-length", b"%d" % (len(body),))])
        self.h2.send_data(stream_id, body, end_stream=True)

    def _on_closed(self) -> list[Event]:
        gone: list[Event] = [Unsubscribed(stream) for stream in self.parents]
        self.parents.clear()
        self._streams.clear()
        self.pushes.clear()
        return gone


class Subscriber(_Connection):
    """
    A cache tier's end of its connection to one upstream.

    :param secret: the bearer token to present (None: none).
    """

    def __init__(self, settings: ChannelSettings = ChannelSettings(), secret: bytes | None = None,
                 authority: bytes = b"fbstream") -> None:
        super().__init__(client_side=True, settings=settings)
        self.secret = secret
        self.authority = authority
        #: Subscription request stream id -> live stream, and the reverse.
        self._streams: dict[int, str] = {}
        self.subscriptions: dict[str, int] = {}
        #: Open pushes: stream id -> (live stream, path), until their response ends.
        self.pushes: dict[int, tuple[str, bytes]] = {}

    def start(self) -> None:
        """Send the preface and SETTINGS: pushes on, windows sized for segments."""
        self.h2.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 1,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.settings.window,
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.settings.max_pushes,
        })
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(self.settings.window)

    def subscribe(self, stream: str) -> bool:
        """Ask for ``stream``'s pushes; False if this connection cannot (closed, going away, full)."""
        if self.closed is not None or stream in self.subscriptions:
            return stream in self.subscriptions
        if len(self.subscriptions) >= self.settings.max_subscriptions:
            return False
        if self.h2.open_outbound_streams >= self.h2.remote_settings.max_concurrent_streams:
            return False  # the publisher takes no more now
        stream_id = self.h2.get_next_available_stream_id()
        headers = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", self.authority),
                   (b":path", SUBSCRIBE + stream.encode())]
        if self.secret is not None:
            headers.append((b"authorization", b"Bearer " + self.secret))
        self.h2.send_headers(stream_id, headers, end_stream=True)
        self._streams[stream_id] = stream
        self.subscriptions[stream] = stream_id
        return True

    def unsubscribe(self, stream: str) -> None:
        stream_id = self.subscriptions.pop(stream, None)
        if stream_id is None:
            return
        self._streams.pop(stream_id, None)
        if self.closed is None:
            self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)

    def refuse(self, push_id: int) -> None:
        """Refuse a push (or stop one): the publisher stops sending it."""
        if self.pushes.pop(push_id, None) is not None and self.closed is None:
            self.h2.reset_stream(push_id, h2.errors.ErrorCodes.CANCEL)

    def _event(self, event: h2.events.Event) -> list[Event]:
        if isinstance(event, h2.events.PushedStreamReceived):
            return self._promised(event.parent_stream_id or 0, event.pushed_stream_id or 0, event.headers or [])
        if isinstance(event, h2.events.ResponseReceived):
            return self._response(event.stream_id, event.headers or [])
        if isinstance(event, h2.events.DataReceived):
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if event.stream_id in self.pushes and event.data:
                return [PushData(event.stream_id, event.data)]
            return []  # a refused subscription's explanation, or a push we gave up
        if isinstance(event, h2.events.StreamEnded):
            if self.pushes.pop(event.stream_id, None) is not None:
                return [PushEnded(event.stream_id)]
            stream = self._streams.pop(event.stream_id, None)
            if stream is not None and self.subscriptions.get(stream) == event.stream_id:
                del self.subscriptions[stream]
                return [Rejected(stream, 0)]
            return []
        if isinstance(event, h2.events.StreamReset):
            if self.pushes.pop(event.stream_id, None) is not None:
                return [PushReset(event.stream_id)]
            stream = self._streams.pop(event.stream_id, None)
            if stream is not None and self.subscriptions.get(stream) == event.stream_id:
                del self.subscriptions[stream]
                return [Rejected(stream, 0)]
            return []
        return []

    def _promised(self, parent: int, pushed: int, headers: list[tuple[bytes, bytes]]) -> list[Event]:
        if _headers_size(headers) > MAX_HEADER_BYTES:
            raise _Hostile("a push promise's headers are over %d bytes" % (MAX_HEADER_BYTES,))
        stream = self._streams.get(parent)
        fields = dict(headers)
        path = fields.get(b":path", b"")
        if stream is None or self.subscriptions.get(stream) != parent:
            self.h2.reset_stream(pushed, h2.errors.ErrorCodes.REFUSED_STREAM)
            return []
        if fields.get(b":method") != b"GET" or not PLAYBACK_PATH.match(path) or \
                not path.startswith(b"/live/%s/" % (stream.encode(),)):
            raise _Hostile("a push of %r on the subscription to %s" % (path[:200], stream))
        if len(self.pushes) >= self.settings.max_pushes:
            # h2 does not hold promises to our MAX_CONCURRENT_STREAMS.
            raise _Hostile("more than %d pushes open at once" % (self.settings.max_pushes,))
        self.pushes[pushed] = (stream, path)
        return []

    def _response(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> list[Event]:
        if _headers_size(headers) > MAX_HEADER_BYTES:
            raise _Hostile("a response's headers are over %d bytes" % (MAX_HEADER_BYTES,))
        status = dict(headers).get(b":status", b"")
        code = int(status) if status.isdigit() and len(status) == 3 else 0
        promised = self.pushes.get(stream_id)
        if promised is not None:
            if code == 0:
                raise _Hostile("a push with the status %r" % (status[:20],))
            return [PushStarted(stream_id, promised[0], promised[1], code,
                                [(n, v) for n, v in headers if not n.startswith(b":")])]
        stream = self._streams.get(stream_id)
        if stream is None or self.subscriptions.get(stream) != stream_id:
            return []
        if code == 200:
            return [Accepted(stream)]
        del self.subscriptions[stream]
        self._streams.pop(stream_id, None)
        return [Rejected(stream, code)]

    def _on_closed(self) -> list[Event]:
        gone: list[Event] = [PushReset(push_id) for push_id in self.pushes]
        gone += [Rejected(stream, 0) for stream in self.subscriptions]
        self.pushes.clear()
        self.subscriptions.clear()
        self._streams.clear()
        return gone
