"""
The broadcaster's connection: the encoder's FLV tags to the server over
RTMP(S), its bitrate fitted to the link, reconnecting by itself.

It asks the server for an acknowledgement every few KB
(:func:`~fbstream.broadcast.rate.ack_window`), and four times a second hands
:class:`~fbstream.broadcast.rate.UploadRate` the bytes sent and acknowledged
since the connection began; the bitrate it answers goes to the encoder. When
the queue grows past :data:`~fbstream.broadcast.rate.QUEUE_DROP` seconds,
video waits for the next keyframe (asked for at once) while audio goes on.

A connection lost is made again (a ``ClientService``, backing off from half a
second to five) with the same stream key, which the server takes as the same
broadcast coming back: it holds the viewers' stream meanwhile. The new
connection starts with the sequence headers kept from the first and with a
keyframe. A publish the server refuses (a bad or expired token, the video
ended) is not retried: :attr:`Broadcast.done` fails with the server's reason.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import attrs
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from fbstream.broadcast.rate import UploadRate
from fbstream.live.rtmp import RTMPClientProtocol, RTMPStatusError
from fbstream.media import MediaMessage
from fbstream.rtmp.messages import AUDIO, DATA_AMF0, VIDEO

#: Seconds a new connection has to be publishing, else it is dropped and made again.
CONNECT_TIMEOUT = 10.0
#: How often the upload rate is looked at.
TICK = 0.25
#: What the server says of a publish while it still holds our last
#: connection (one that died without its close reaching it): it lets a new
#: one take over once the old one has been silent a few seconds.
BUSY = "being published"
#: Statuses that end a broadcast: retrying would be refused again.
REFUSED = ("NetStream.Publish.BadName", "NetStream.Publish.Denied", "NetConnection.Connect.Rejected")


class URLError(ValueError):
    """An ingest URL this broadcaster cannot use."""


@attrs.frozen
class IngestURL:
    """``rtmp[s]://host[:port]/app/stream-key``."""

    tls: bool
    host: str
    port: int
    app: str
    key: str

    @classmethod
    def parse(cls, url: str) -> IngestURL:
        parts = urlsplit(url)
        if parts.scheme not in ("rtmp", "rtmps") or not parts.hostname:
            raise URLError("an ingest URL is rtmp://HOST[:PORT]/APP/KEY or rtmps://..., not %r" % (url,))
        app, _, name = parts.path.lstrip("/").partition("/")
        key = name + ("?" + parts.query if parts.query else "")
        if not app or not name:
            raise URLError("%r names no application and stream key (rtmp://HOST/live/KEY)" % (url,))
        tls = parts.scheme == "rtmps"
        return cls(tls, parts.hostname, parts.port or (443 if tls else 1935), app, key)

    @property
    def tc_url(self) -> str:
        return "%s://%s:%d/%s" % ("rtmps" if self.tls else "rtmp", self.host, self.port, self.app)


def _is_header(type_id: int, payload: bytes) -> bool:
    """A sequence header or the metadata: sent again at the start of each connection."""
    if type_id == DATA_AMF0:
        return True
    if type_id == VIDEO:
        return len(payload) > 1 and payload[0] & 0x0F == 7 and payload[1] == 0
    if type_id == AUDIO:
        return len(payload) > 1 and payload[0] >> 4 == 10 and payload[1] == 0
    return False


def _is_keyframe(payload: bytes) -> bool:
    return len(payload) > 1 and payload[0] >> 4 == 1 and payload[1] == 1


class Broadcast:
    """
    One broadcast to ``url``. ``encoder`` is an
    :class:`~fbstream.broadcast.encode.Encoder` (its ``set_bitrate`` and
    ``keyframe``); its tags come in through :meth:`tags`, on the reactor.
    """

    log = Logger()

    def __init__(self, reactor: Any, url: IngestURL, encoder: Any, rate: UploadRate,
                 tls_options: Any = None) -> None:
        self.reactor = reactor
        self.url = url
        self.encoder = encoder
        self.rate = rate
        endpoint: Any = HostnameEndpoint(reactor, url.host, url.port, timeout=CONNECT_TIMEOUT)
        if url.tls:
            if tls_options is None:
                from twisted.internet.ssl import optionsForClientTLS

                tls_options = optionsForClientTLS(url.host)
            endpoint = wrapClientTLS(tls_options, endpoint)
        factory = Factory.forProtocol(lambda: RTMPClientProtocol(url.app, url.tc_url, reactor))
        self.service = ClientService(endpoint, factory, retryPolicy=backoffPolicy(0.5, 5.0), clock=reactor)
        self.done: Deferred[None] = Deferred()
        self.protocol: RTMPClientProtocol | None = None
        self.stream_id = 0
        #: Publishing now (False while connecting or reconnecting).
        self.live = False
        self.connections = 0
        self._headers: dict[tuple[int, int], tuple[int, int, bytes]] = {}
        self._await_keyframe = True
        self._window = 0
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = reactor
        self._stopping = False
        #: Counts for the display: tags sent and dropped, and the bytes
        #: acknowledged over every connection.
        self.sent_tags = 0
        self.dropped_tags = 0
        self._acked_before = 0

    @property
    def acknowledged(self) -> int:
        """Bytes the server acknowledged, over every connection so far."""
        live = self.protocol.conn.acknowledged if self.protocol is not None else 0
        return self._acked_before + live

    def start(self) -> None:
        self.service.startService()
        self._ticker.start(TICK, now=False)
        self._connect()

    def stop(self, error: BaseException | None = None) -> Deferred[None]:
        """End the broadcast (``done`` fails with ``error``, if given)."""
        self._stopping = True
        if self._ticker.running:
            self._ticker.stop()
        protocol = self.protocol
        if protocol is not None and self.live:
            protocol.unpublish(self.stream_id, self.url.key)
        d = self.service.stopService()
        d.addCallback(lambda _: self._end(error))
        return d

    def _end(self, error: BaseException | None) -> None:
        if self.done.called:
            return
        if error is None:
            self.done.callback(None)
        else:
            self.done.errback(error)

    @inlineCallbacks
    def _connect(self) -> Any:
        last = None
        while not self._stopping:
            protocol = yield self.service.whenConnected()
            if protocol is last:
                # The service has not heard of the loss yet: its next
                # connection is not made (our ``lost`` fires first).
                yield deferLater(self.reactor, 0.05, lambda: None)
                continue
            last = protocol
            try:
                yield self._publish(protocol).addTimeout(CONNECT_TIMEOUT, self.reactor)
            except RTMPStatusError as e:
                if e.code in REFUSED and BUSY not in e.description:
                    self.log.error("the server refused the broadcast: {reason}", reason=e.description)
                    self._stopping = True
                    self.service.stopService()
                    self._end(e)
                    return
                self.log.warn("publishing failed: {reason}; connecting again", reason=str(e))
                protocol.transport.abortConnection()
                continue
            except Exception as e:
                self.log.warn("publishing failed: {reason}; connecting again", reason=str(e) or repr(e))
                protocol.transport.abortConnection()
                continue
            yield protocol.lost
            self._lost(protocol)

    @inlineCallbacks
    def _publish(self, protocol: RTMPClientProtocol) -> Any:
        yield protocol.ready
        self._window = self.rate.ack_window
        protocol.ask_acknowledgements(self._window)
        stream_id = yield protocol.create_stream()
        yield protocol.publish(stream_id, self.url.key)
        self.protocol, self.stream_id = protocol, stream_id
        protocol.on_status = self._status
        self.connections += 1
        self.live = True
        self.rate.reset(self.reactor.seconds())
        for type_id, timestamp, payload in self._headers.values():
            protocol.send_media(stream_id, MediaMessage(type_id, timestamp, payload))
        self._await_keyframe = True
        self.encoder.keyframe()
        self.log.info("live on {url} (connection {n})", url=self.url.tc_url, n=self.connections)

    def _status(self, status: Any) -> None:
        if status.level == "error":
            self.log.warn("the server says {code}: {description}", code=status.code, description=status.description)

    def _lost(self, protocol: RTMPClientProtocol) -> None:
        if protocol is self.protocol:
            self._acked_before += protocol.conn.acknowledged
            self.protocol = None
            self.live = False
        if not self._stopping:
            self.log.warn("connection lost; connecting again with the same key")

    def tags(self, tags: list[tuple[int, int, bytes]]) -> None:
        """The encoder's tags (on the reactor): sent, or dropped while there is nowhere to send them."""
        for type_id, timestamp, payload in tags:
            if _is_header(type_id, payload):
                self._headers[(type_id, payload[0] if payload else 0)] = (type_id, timestamp, payload)
                if not self.live:
                    continue
            elif type_id == VIDEO:
                if not self.live or self.rate.should_drop():
                    if not self._await_keyframe:
                        self.encoder.keyframe()
                    self._await_keyframe = True
                    self.dropped_tags += 1
                    continue
                if self._await_keyframe:
                    if not _is_keyframe(payload):
                        self.dropped_tags += 1
                        continue
                    self._await_keyframe = False
            elif not self.live:
                self.dropped_tags += 1
                continue
            assert self.protocol is not None
            self.protocol.send_media(self.stream_id, MediaMessage(type_id, timestamp, payload))
            self.sent_tags += 1

    def _tick(self) -> None:
        protocol = self.protocol
        if protocol is None or not self.live:
            return
        change = self.rate.tick(self.reactor.seconds(), protocol.conn.bytes_sent, protocol.conn.acknowledged)
        if self.rate.ack_window != self._window:
            self._window = self.rate.ack_window
            protocol.ask_acknowledgements(self._window)
        if change is not None:
            self.log.info("video bitrate {kbps} kbit/s: {reason}", kbps=change.video // 1000, reason=change.reason)
            self.encoder.set_bitrate(change.video)
