"""
Twisted protocols around the sans-IO RTMP connections: they move bytes between
the transport and the core and act on its events, nothing more.

:class:`RTMPServerProtocol` serves publishers and players against a
:class:`~fbstream.live.hub.StreamHub`; :class:`RTMPClientProtocol` is the
client side used to relay a stream onward and by tests.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from typing import Any, assert_never

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from fbstream.config import default
from fbstream.live.hub import LiveStream, StreamHub
from fbstream.live.ingest import HubIngest, PlayRefused, PublishRefused
from fbstream.live.urls import STREAM_ID_PATTERN
from fbstream.media import IPlayer, IPublisher, MediaMessage
from fbstream.metrics import (
    RTMP_CONNECTIONS,
    RTMP_CONNECTIONS_REFUSED,
    RTMP_CONNECTIONS_TOTAL,
    RTMP_PLAYERS,
    RTMP_PLAYERS_DROPPED,
    RTMP_PROTOCOL_ERRORS,
    RTMP_PUBLISH_REJECTED,
)
from fbstream.ratelimit import KeyedBuckets
from fbstream.rtmp import amf0
from fbstream.rtmp import connection as c
from fbstream.rtmp.errors import RTMPError, UnsupportedCodec
from fbstream.rtmp.messages import AUDIO, DATA_AMF0, VIDEO

#: Stream names we accept: the stream ids of the playback URLs.
STREAM_NAME = re.compile(r"^%s$" % (STREAM_ID_PATTERN,))
#: How much of a name a client chose is repeated back to it or into the log.
SHOWN_NAME = 64


def shown(name: str) -> str:
    """``name`` as it may be echoed: quoted, and cut to :data:`SHOWN_NAME` characters."""
    if len(name) <= SHOWN_NAME:
        return repr(name)
    return "%r... (%d characters)" % (name[:SHOWN_NAME], len(name))


@attrs.define
class RTMPServerSettings:
    """
    What an operator tunes about an RTMP listener: the ``rtmp.*`` settings,
    whose help and defaults are in :mod:`fbstream.config` (``twistd fbstream
    --help`` lists them). The per-address limits are the PoP's: behind it
    the clients are PoPs and dc-proxies, each carrying many broadcasters.
    """

    app: str = default("rtmp.app")
    handshake_timeout: float = default("rtmp.handshake_timeout")
    idle_timeout: float = default("rtmp.idle_timeout")
    max_message_size: int = default("rtmp.max_message_size")
    max_chunk_streams: int = default("rtmp.max_chunk_streams")
    player_queue_bytes: int = default("rtmp.player_queue_bytes")
    max_connections: int = default("rtmp.max_connections")
    max_connections_per_address: int = default("rtmp.max_connections_per_address")
    connects_per_second_per_address: float = default("rtmp.connects_per_second_per_address")


class RTMPServerFactory(Factory):
    log = Logger()

    def __init__(self, hub: StreamHub | None, reactor: IReactorTime, settings: RTMPServerSettings,
                 ingest: Any = None, role: str = "", puller: Any = None) -> None:
        #: Players play from the hub; a relay has none (playback is over HTTP).
        self.hub = hub
        #: Where a stream not live in the hub is pulled from (an upstream hop), if anywhere.
        self.puller = puller
        self.reactor = reactor
        self.settings = settings
        self.role = hub.role if hub is not None else role
        if ingest is None:
            assert hub is not None, "an RTMP server needs a hub or an ingest"
            ingest = HubIngest(hub)
        #: Where publishes go (an IIngest).
        self.ingest = ingest
        self.open_connections = 0
        #: Client address -> connections it has open (no entry at zero).
        self.by_address: dict[str, int] = {}
        #: New connections per client address, if limited.
        rate = settings.connects_per_second_per_address
        self._connects = KeyedBuckets(rate, 2 * rate) if rate else None

    def buildProtocol(self, addr: Any) -> RTMPServerProtocol | None:
        host = getattr(addr, "host", None)
        if host is not None and not self._may_connect(host):
            RTMP_CONNECTIONS_REFUSED.labels(role=self.role).inc()
            return None
        per_address = self.settings.max_connections_per_address
        if host is not None and per_address and self.by_address.get(host, 0) >= per_address:
            self.log.warn("refusing RTMP connection from {host}: it has {n} open",
                          host=host, n=self.by_address[host])
            RTMP_CONNECTIONS_REFUSED.labels(role=self.role).inc()
            return None
        if self.open_connections >= self.settings.max_connections:
            self.log.warn(
                "refusing RTMP connection from {addr}: {n} connections open",
                addr=addr,
                n=self.open_connections,
            )
            RTMP_CONNECTIONS_REFUSED.labels(role=self.role).inc()
            return None
        proto = RTMPServerProtocol(self)
        proto.factory = self
        return proto

    def _may_connect(self, host: str) -> bool:
        return self._connects is None or not self._connects.take(host, self.reactor.seconds())


@implementer(IPublisher)
class _Publisher:
    def __init__(self, proto: RTMPServerProtocol, stream_id: int) -> None:
        self.proto = proto
        self.stream_id = stream_id
        self.description = proto.peer

    def stop(self, reason: str) -> None:
        """Tell the publisher why with an error status, then disconnect it."""
        self.proto.log.info("stopping publisher {peer}: {reason}", peer=self.proto.peer, reason=reason)
        self.proto.stop_publishing(self.stream_id, reason)

    def pause_reading(self) -> None:
        """Stop reading from the publisher (the next hop is behind)."""
        if not self.proto._closed:
            self.proto.transport.pauseProducing()

    def resume_reading(self) -> None:
        if not self.proto._closed:
            self.proto.transport.resumeProducing()

    @property
    def silent_for(self) -> float:
        """Seconds since the publisher last sent anything."""
        return self.proto.factory.reactor.seconds() - self.proto.last_received


@implementer(IPlayer)
class _Player:
    def __init__(self, proto: RTMPServerProtocol, stream_id: int, name: str) -> None:
        self.proto = proto
        self.stream_id = stream_id
        self.name = name
        self.description = proto.peer

    def send(self, message: MediaMessage) -> None:
        self.proto.send_media(self.stream_id, message)

    def stream_ended(self) -> None:
        self.proto.player_ended(self)


@implementer(IPushProducer)
class RTMPServerProtocol(Protocol, TimeoutMixin):
    """One RTMP connection from a publisher or a player."""

    log = Logger()
    #: Set by makeConnection: a TCP or TLS transport (abortConnection, producers).
    transport: Any

    def __init__(self, factory: RTMPServerFactory) -> None:
        self.factory = factory
        self.settings = factory.settings
        self.hub = factory.hub
        self.peer = "?"
        self.conn: c.ServerConnection | None = None
        #: Message stream id -> the sink (ISink) its media goes to.
        self.publishing: dict[int, Any] = {}
        self._opening: dict[int, Deferred[Any]] = {}
        self.last_received = 0.0
        self.playing: dict[int, tuple[LiveStream, _Player]] = {}
        self._paused = False
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._closed = False
        self.address: str | None = None

    # Transport plumbing --------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer = "%s:%s" % (getattr(peer, "host", peer), getattr(peer, "port", ""))
        self.conn = c.ServerConnection(
            time_ms=int(self.factory.reactor.seconds() * 1000),
            max_message_size=self.settings.max_message_size,
            max_chunk_streams=self.settings.max_chunk_streams,
            clock=self.factory.reactor.seconds,
        )
        self.setTimeout(self.settings.handshake_timeout)
        self.factory.open_connections += 1
        self.address = getattr(peer, "host", None)
        if self.address is not None:
            by_address = self.factory.by_address
            by_address[self.address] = by_address.get(self.address, 0) + 1
        RTMP_CONNECTIONS.labels(role=self.factory.role).inc()
        RTMP_CONNECTIONS_TOTAL.labels(role=self.factory.role).inc()

    def callLater(self, period: float, func: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        # TimeoutMixin waits through this: the factory's (injectable) reactor.
        return self.factory.reactor.callLater(period, func, *args, **kw)

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        assert self.conn is not None
        if self.publishing:
            self.resetTimeout()
        self.last_received = self.factory.reactor.seconds()
        try:
            for event in self.conn.receive(data):
                self._event(event)
                if self._closed:
                    return
        except RTMPError as e:
            self._protocol_error(str(e))
            return
        except Exception:
            # A bug, or input no check foresaw: it costs this connection only.
            self.log.failure("closing RTMP connection from {peer}: handling its data failed", peer=self.peer)
            self._protocol_error("handling its data failed")
            return
        self._flush()

    def _flush(self) -> None:
        assert self.conn is not None
        data = self.conn.bytes_to_send()
        if data:
            self._write(data)

    def _write(self, data: bytes) -> None:
        if self._closed:
            return
        if self._paused or self._queue:
            self._queue.append(data)
            self._queued += len(data)
            if self._queued > self.settings.player_queue_bytes:
                RTMP_PLAYERS_DROPPED.labels(role=self.factory.role).inc()
                self.log.warn(
                    "dropping slow player {peer}: {queued} bytes behind",
                    peer=self.peer,
                    queued=self._queued,
                )
                self._abort()
            return
        self.transport.write(data)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        while self._queue and not self._paused and not self._closed:
            data = self._queue.popleft()
            self._queued -= len(data)
            self.transport.write(data)

    def stopProducing(self) -> None:
        self._abort()

    def timeoutConnection(self) -> None:
        self.log.info("closing idle RTMP connection from {peer}", peer=self.peer)
        self._abort()

    def _protocol_error(self, reason: str) -> None:
        RTMP_PROTOCOL_ERRORS.labels(role=self.factory.role).inc()
        self.log.warn("closing RTMP connection from {peer}: {reason}", peer=self.peer, reason=reason)
        self._abort()

    def _abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        self._queued = 0
        self.transport.abortConnection()
        self._detach("connection aborted")

    def _close_after_flush(self) -> None:
        self._flush()
        self._closed = True
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closed = True
        self.setTimeout(None)
        self.factory.open_connections -= 1
        if self.address is not None:
            by_address = self.factory.by_address
            by_address[self.address] -= 1
            if not by_address[self.address]:
                del by_address[self.address]
        RTMP_CONNECTIONS.labels(role=self.factory.role).dec()
        self._detach("publisher disconnected")
        self._queue.clear()

    def _detach(self, reason: str) -> None:
        """Leave every stream this connection publishes or plays."""
        for opening in list(self._opening.values()):
            opening.cancel()
        self._opening.clear()
        for sink in list(self.publishing.values()):
            sink.close(reason)
        self.publishing.clear()
        for sid in list(self.playing):
            self._stop_playing(sid)

    # Events --------------------------------------------------------------

    def _event(self, event: c.ServerEvent) -> None:
        assert self.conn is not None
        match event:
            case c.MediaReceived():
                stream = self.publishing.get(event.stream_id)
                if stream is not None:
                    try:
                        stream.media(MediaMessage(event.type_id, event.timestamp, event.payload))
                    except UnsupportedCodec as e:
                        self._refuse_stream(event.stream_id, str(e))
            case c.DataReceived():
                stream = self.publishing.get(event.stream_id)
                if stream is not None and event.name == "onMetaData":  # a sink
                    first = event.values[0] if event.values else None
                    if isinstance(first, amf0.ECMAArray):
                        values = first.items
                    else:
                        values = first if isinstance(first, dict) else {}
                    stream.set_metadata(MediaMessage(DATA_AMF0, event.timestamp, event.payload), values)
            case c.ConnectRequest():
                if event.app != self.settings.app:
                    self.conn.reject_connect(event, "unknown application %r" % (event.app,))
                    self._close_after_flush()
                    return
                early = self.conn.accept_connect(event)
                self.setTimeout(self.settings.idle_timeout)
                for pipelined in early:  # createStream, publish... sent with connect
                    self._event(pipelined)
                    if self._closed:
                        return
            case c.PublishRequest():
                self._publish(event)
            case c.PlayRequest():
                self._play(event)
            case c.StreamClosed():
                sink = self.publishing.pop(event.stream_id, None)
                if sink is not None:
                    sink.close(event.reason)
                opening = self._opening.pop(event.stream_id, None)
                if opening is not None:
                    opening.cancel()
                self._stop_playing(event.stream_id)
            case _:
                assert_never(event)

    def _publish(self, request: c.PublishRequest) -> None:
        assert self.conn is not None
        if not STREAM_NAME.match(request.name):
            self._reject_publish(request, "NetStream.Publish.BadName", "bad-name",
                                 "invalid stream name %s" % (shown(request.name),))
            return
        sid = request.stream_id
        publisher = _Publisher(self, sid)
        d = self.factory.ingest.open(request.name, request.query, publisher)
        self._opening[sid] = d

        def accepted(sink: Any) -> None:
            self._opening.pop(sid, None)
            if self._closed:
                sink.close("publisher disconnected")
                return
            self.publishing[sid] = sink
            assert self.conn is not None
            self.conn.accept_publish(request)
            self._flush()

        def refused(failure: Failure) -> None:
            self._opening.pop(sid, None)
            if self._closed:
                return
            if failure.check(PublishRefused):
                e = failure.value
                self._reject_publish(request, e.code, e.reason, e.description)
            else:
                self.log.failure("publishing {name} failed", failure, name=request.name)
                self._reject_publish(request, "NetStream.Publish.Failed", "error",
                                     "the server could not start the stream")

        d.addCallbacks(accepted, refused)

    def _reject_publish(self, request: c.PublishRequest, code: str, reason: str, description: str) -> None:
        assert self.conn is not None
        RTMP_PUBLISH_REJECTED.labels(role=self.factory.role, reason=reason).inc()
        self.log.info("refusing publish of {name} from {peer}: {description}",
                      name=shown(request.name), peer=self.peer, description=description)
        self.conn.reject_publish(request, code, description)
        self._close_after_flush()

    def _refuse_stream(self, stream_id: int, description: str) -> None:
        assert self.conn is not None
        sink = self.publishing.pop(stream_id)
        RTMP_PUBLISH_REJECTED.labels(role=self.factory.role, reason="codec").inc()
        self.log.warn("refusing stream {name} from {peer}: {description}",
                      name=sink.name, peer=self.peer, description=description)
        sink.close(description)
        self.conn.send_status(stream_id, "error", "NetStream.Failed", description)
        self._close_after_flush()

    def stop_publishing(self, stream_id: int, reason: str) -> None:
        if self._closed or self.conn is None:
            return
        sink = self.publishing.pop(stream_id, None)
        if sink is not None:
            sink.close(reason)
        self.conn.send_status(stream_id, "error", "NetStream.Failed", reason)
        self._close_after_flush()

    def _play(self, request: c.PlayRequest) -> None:
        assert self.conn is not None
        if self.hub is None:
            self._reject_play(request, "NetStream.Play.Failed", "this server only relays publishers; play over HTTP")
            return
        if not STREAM_NAME.match(request.name):
            self._reject_play(request, "NetStream.Play.StreamNotFound", "invalid stream name")
            return
        puller = self.factory.puller
        if request.name in self.hub.streams or puller is None:
            self._start_playing(request)
            return
        # Not live here: pulled from upstream first (the player waits).
        sid = request.stream_id
        d = puller.stream_for(request.name)
        self._opening[sid] = d

        def pulled(_: Any) -> None:
            self._opening.pop(sid, None)
            if not self._closed:
                self._start_playing(request)

        def refused(failure: Failure) -> None:
            self._opening.pop(sid, None)
            if self._closed:
                return
            if failure.check(PlayRefused):
                self._reject_play(request, failure.value.code, failure.value.description)
            else:
                self.log.failure("playing {name} failed", failure, name=request.name)
                self._reject_play(request, "NetStream.Play.Failed", "the server could not play the stream")

        d.addCallbacks(pulled, refused)

    def _reject_play(self, request: c.PlayRequest, code: str, description: str) -> None:
        assert self.conn is not None
        self.conn.reject_play(request, code, description)
        self._close_after_flush()

    def _start_playing(self, request: c.PlayRequest) -> None:
        assert self.conn is not None and self.hub is not None
        if request.name not in self.hub.streams:
            self._reject_play(request, "NetStream.Play.StreamNotFound", "stream %s is not live" % (request.name,))
            return
        self.conn.accept_play(request)
        player = _Player(self, request.stream_id, request.name)
        stream = self.hub.play(request.name, player)
        self.playing[request.stream_id] = (stream, player)
        RTMP_PLAYERS.labels(role=self.factory.role).inc()
        self.setTimeout(None)
        self.transport.registerProducer(self, True)

    def _stop_playing(self, stream_id: int) -> None:
        entry = self.playing.pop(stream_id, None)
        if entry is not None:
            stream, player = entry
            assert self.hub is not None
            self.hub.stop_playing(stream, player)
            RTMP_PLAYERS.labels(role=self.factory.role).dec()

    def send_media(self, stream_id: int, message: MediaMessage) -> None:
        if self._closed or self.conn is None:
            return
        self.conn.send_media(stream_id, message.type_id, message.timestamp, message.payload)
        self._flush()

    def player_ended(self, player: _Player) -> None:
        if self._closed or self.conn is None:
            return
        self.conn.end_play(player.stream_id, player.name)
        self._flush()
        self._stop_playing(player.stream_id)


# The client side ------------------------------------------------------------


class RTMPStatusError(Exception):
    """The server answered with an error status or ``_error``."""

    def __init__(self, message: str, code: str = "", description: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.description = description or message


class RTMPClientProtocol(Protocol):
    """
    The client side of one RTMP connection.

    ``ready`` fires once ``connect`` succeeds; :meth:`create_stream`,
    :meth:`publish` and :meth:`play` return Deferreds of the answers. Media and
    data from the server (when playing) go to ``on_media(MediaMessage)``.
    """

    log = Logger()
    transport: Any

    def __init__(self, app: str, tc_url: str, reactor: IReactorTime,
                 on_media: Callable[[MediaMessage], None] | None = None) -> None:
        self.conn = c.ClientConnection(app, tc_url, clock=reactor.seconds)
        self.reactor = reactor
        self.on_media = on_media
        #: Called with statuses nobody waits for (a server stopping our publish).
        self.on_status: Callable[[c.StatusReceived], None] | None = None
        self.ready: Deferred[dict[str, Any]] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self._creating: deque[Deferred[int]] = deque()
        self._status_waiters: dict[int, Deferred[c.StatusReceived]] = {}
        #: Every status received, in order.
        self.statuses: list[c.StatusReceived] = []

    def connectionMade(self) -> None:
        self._flush()

    def _flush(self) -> None:
        data = self.conn.bytes_to_send()
        if data:
            self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        try:
            events = self.conn.receive(data)
        except RTMPError as e:
            self.log.warn("RTMP server sent bad data: {reason}", reason=str(e))
            self.transport.abortConnection()
            return
        for event in events:
            self._event(event)
        self._flush()

    def _event(self, event: c.ClientEvent) -> None:
        match event:
            case c.Connected():
                self.ready.callback(event.info)
            case c.StreamCreated():
                if self._creating:
                    self._creating.popleft().callback(event.stream_id)
            case c.StatusReceived():
                self.statuses.append(event)
                waiter = self._status_waiters.pop(event.stream_id, None)
                if waiter is not None:
                    if event.level == "error":
                        waiter.errback(RTMPStatusError("%s: %s" % (event.code, event.description),
                                                       event.code, event.description))
                    else:
                        waiter.callback(event)
                elif self.on_status is not None:
                    self.on_status(event)
            case c.CommandFailed():
                error = RTMPStatusError("%s failed: %r" % (event.command, event.info))
                if event.command == "connect" and not self.ready.called:
                    self.ready.errback(error)
                elif event.command == "createStream" and self._creating:
                    self._creating.popleft().errback(error)
            case c.MediaReceived():
                if self.on_media is not None:
                    self.on_media(MediaMessage(event.type_id, event.timestamp, event.payload))
            case c.DataReceived():
                if self.on_media is not None:
                    self.on_media(MediaMessage(DATA_AMF0, event.timestamp, event.payload))
            case _:
                assert_never(event)

    def create_stream(self) -> Deferred[int]:
        d: Deferred[int] = Deferred()
        self._creating.append(d)
        self.conn.create_stream()
        self._flush()
        return d

    def ask_acknowledgements(self, window: int) -> None:
        """Ask the server to acknowledge every ``window`` bytes (``conn.acknowledged`` counts them)."""
        self.conn.ask_acknowledgements(window)
        self._flush()

    def _await_status(self, stream_id: int) -> Deferred[c.StatusReceived]:
        d: Deferred[c.StatusReceived] = Deferred()
        self._status_waiters[stream_id] = d
        return d

    def publish(self, stream_id: int, name: str) -> Deferred[c.StatusReceived]:
        """Publish; fires on ``NetStream.Publish.Start``, fails on an error status."""
        d = self._await_status(stream_id)
        self.conn.publish(stream_id, name)
        self._flush()
        return d

    def play(self, stream_id: int, name: str) -> Deferred[c.StatusReceived]:
        """Play; fires on the first status (``NetStream.Play.Reset``)."""
        d = self._await_status(stream_id)
        self.conn.play(stream_id, name)
        self._flush()
        return d

    def send_media(self, stream_id: int, message: MediaMessage) -> None:
        self.conn.send_media(stream_id, message.type_id, message.timestamp, message.payload)
        self._flush()

    def unpublish(self, stream_id: int, name: str) -> None:
        self.conn.unpublish(stream_id, name)
        self._flush()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        waiters: list[Deferred[Any]] = [*self._creating, *self._status_waiters.values()]
        for waiter in waiters:
            if not waiter.called:
                waiter.errback(reason)
        self._creating.clear()
        self._status_waiters.clear()
        if not self.ready.called:
            self.ready.errback(reason)
        self.lost.callback(None)


__all__ = [
    "AUDIO",
    "VIDEO",
    "RTMPClientProtocol",
    "RTMPServerFactory",
    "RTMPServerProtocol",
    "RTMPServerSettings",
    "RTMPStatusError",
]
