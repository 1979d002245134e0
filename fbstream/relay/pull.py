"""
RTMP playback away from the encoder: a PoP (or a dc-proxy) pulls each live
stream once from the next hop towards its encoder and fans it out to any
number of RTMP players here.

The first player of a stream starts the pull: an RTMP play session to the
next hops in the order the route gives (a hop that does not have the stream
passes it to the next), whose media feeds a stream of the local
:class:`~fbstream.live.hub.StreamHub` as if it were published here. Players
that join while the pull starts wait for it; later ones get the hub's start
messages, so each starts on a keyframe. A player that falls too far behind
is dropped by its own connection (``rtmp.player_queue_bytes``). When the last
player leaves, the pull lingers ``linger`` seconds for another, then ends.
When the upstream ends or is lost, every player here is told the stream
ended. The hops chain: PoP → dc-proxy → encoder, one pull per hop per stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.logger import Logger
from zope.interface import implementer

from fbstream.live.hub import AlreadyPublishing, LiveStream, StreamHub
from fbstream.live.ingest import PlayRefused
from fbstream.live.rtmp import RTMPClientProtocol, RTMPStatusError
from fbstream.media import IPublisher, MediaMessage
from fbstream.metrics import RELAY_HOP_FAILURES
from fbstream.reactors import IReactorClients
from fbstream.rtmp.connection import StatusReceived
from fbstream.rtmp.errors import RTMPError
from fbstream.rtmp.messages import DATA_AMF0

#: route(name) -> the next hops' endpoint strings, in the order to try.
PlayRoute = Callable[[str], list[str]]


@implementer(IPublisher)
class _Pull:
    """One stream pulled from upstream: the local hub's publisher of it."""

    log = Logger()

    def __init__(self, puller: Puller, name: str) -> None:
        self.puller = puller
        self.name = name
        self.description = "pull of %s" % (name,)
        self.client: RTMPClientProtocol | None = None
        self.stream: LiveStream | None = None
        #: Players waiting for the pull to start.
        self.waiters: list[Deferred[LiveStream]] = []
        self._linger: Any = None
        self.closed = False

    def media(self, message: MediaMessage) -> None:
        stream = self.stream
        if stream is None or self.closed:
            return
        try:
            if message.type_id == DATA_AMF0:
                stream.set_metadata(message, {})
            else:
                stream.media(message)
        except RTMPError as e:  # a codec this server refuses, or a malformed tag
            self.stop("upstream sent media we cannot relay: %s" % (e,))

    def stop(self, reason: str) -> None:
        """End the pull: close the upstream session and end the stream for its players."""
        if self.closed:
            return
        self.closed = True
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        if self.client is not None and self.client.transport is not None:
            self.client.transport.loseConnection()
        self.puller._ended(self, reason)

    def players_changed(self, count: int) -> None:
        """The hub's count of our players: with none left, end unless one comes within the linger time."""
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        if count == 0 and not self.closed:
            self._linger = self.puller.reactor.callLater(self.puller.linger, self._lingered)

    def _started(self, stream: LiveStream) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(stream)

    def _refused(self, refused: PlayRefused) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.errback(refused)

    def _lingered(self) -> None:
        self._linger = None
        if self.stream is not None and not self.stream.players:
            self.stop("no players left")

    def _status(self, status: StatusReceived) -> None:
        if status.level == "error" or status.code in ("NetStream.Play.Stop", "NetStream.Play.UnpublishNotify"):
            self.stop("upstream: %s %s" % (status.code, status.description))


class Puller:
    """The pulls of one role: at most one per stream, started by its first player."""

    log = Logger()

    def __init__(self, reactor: IReactorClients, hub: StreamHub, route: PlayRoute, app: str, role: str,
                 connect_timeout: float = 5.0, start_timeout: float = 10.0, linger: float = 5.0) -> None:
        self.reactor = reactor
        self.hub = hub
        self.route = route
        self.app = app
        self.role = role
        self.connect_timeout = connect_timeout
        self.start_timeout = start_timeout
        self.linger = linger
        self.pulls: dict[str, _Pull] = {}

    def stream_for(self, name: str) -> Deferred[LiveStream]:
        """The local stream of ``name``, pulled if need be; fails with :class:`PlayRefused`."""
        stream = self.hub.streams.get(name)
        if stream is not None:
            return succeed(stream)
        pull = self.pulls.get(name)
        if pull is None:
            pull = self.pulls[name] = _Pull(self, name)
            self._start(pull)
        waiter: Deferred[LiveStream] = Deferred()
        pull.waiters.append(waiter)
        return waiter

    @inlineCallbacks
    def _start(self, pull: _Pull) -> Any:
        hops = self.route(pull.name)
        refused: PlayRefused | None = None
        for hop in hops:
            if pull.closed:
                return
            try:
                client = yield self._play(hop, pull)
            except PlayRefused as e:
                refused = e
                continue
            except Exception as e:
                RELAY_HOP_FAILURES.labels(role=self.role).inc()
                self.log.warn("pulling {stream} from {hop} failed: {e}", stream=pull.name, hop=hop, e=e)
                # What a hop that answered said is the better reason to give.
                refused = refused or PlayRefused("NetStream.Play.Failed", "the stream's server could not be reached")
                continue
            if pull.closed:
                client.transport.loseConnection()
                return
            pull.client = client
            client.on_status = pull._status
            client.lost.addCallback(lambda _: pull.stop("upstream connection lost"))
            try:
                pull.stream = self.hub.publish(pull.name, pull)
            except AlreadyPublishing:  # a broadcaster on this very role meanwhile: play that
                client.transport.loseConnection()
                pull.closed = True
                self.pulls.pop(pull.name, None)
                pull._started(self.hub.streams[pull.name])
                return
            self.log.info("pulling {stream} from {hop}", stream=pull.name, hop=hop)
            pull._started(pull.stream)
            pull.players_changed(0)  # ends unless a player attaches within the linger time
            return
        pull.closed = True
        self.pulls.pop(pull.name, None)
        pull._refused(refused or PlayRefused("NetStream.Play.StreamNotFound", "stream %s is not live" % (pull.name,)))

    @inlineCallbacks
    def _play(self, hop: str, pull: _Pull) -> Any:
        endpoint = clientFromString(self.reactor, hop)
        client = RTMPClientProtocol(self.app, "rtmp://%s/%s" % (hop, self.app), self.reactor, on_media=pull.media)
        connecting = connectProtocol(endpoint, client)
        connecting.addTimeout(self.connect_timeout, self.reactor)
        yield connecting
        try:
            yield client.ready.addTimeout(self.start_timeout, self.reactor)
            stream_id = yield client.create_stream().addTimeout(self.start_timeout, self.reactor)
            yield client.play(stream_id, pull.name).addTimeout(self.start_timeout, self.reactor)
        except RTMPStatusError as e:
            client.transport.loseConnection()
            raise PlayRefused(e.code or "NetStream.Play.Failed", e.description) from None
        except BaseException:
            client.transport.loseConnection()
            raise
        return client

    def _ended(self, pull: _Pull, reason: str) -> None:
        if self.pulls.get(pull.name) is pull:
            del self.pulls[pull.name]
        if pull.stream is not None:
            self.log.info("pull of {stream} ended: {reason}", stream=pull.name, reason=reason)
            self.hub.unpublish(pull.stream, reason)
        else:
            pull._refused(PlayRefused("NetStream.Play.Failed", reason))
