"""
The push channel over Twisted: the thin protocols around the sans-IO core
(:mod:`fbstream.push.core`), the publisher's hub that fans each object out to
the subscribers of its stream, and the subscriber's client that keeps one
connection to its upstream, reconnecting with jittered backoff.

What is pushed is an :class:`Offer`: the status and headers a GET of its
path gets, and a body that may still grow (an
:class:`~fbstream.httpbody.IGrowingBody` the offer's maker shares, and says
when it grows). Each push reads the body from its own position, never a
copy, as far as the subscriber's flow-control window and the transport let
it: a slow subscriber costs a position and its transport's bounded buffer.
A push that has not moved for ``stall_timeout`` is given up (the subscriber
fetches that object itself), and so is a manifest or playlist version that a
newer one of the same path overtakes while it waits: for those the latest
version wins.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from fbstream.httpbody import IGrowingBody
from fbstream.push import core as wire
from fbstream.push import metrics as pm


class Offer:
    """
    One object to push to every subscriber of ``stream``.

    :param latest_wins: a newer version of the same path makes this one
        worthless (manifests and playlists); segments are each their own.
    :param made: when its version was made (Unix seconds), carried to every
        hop for the push-lag histogram.
    """

    def __init__(self, stream: str, path: bytes, code: int, headers: list[tuple[bytes, bytes]],
                 body: IGrowingBody, *, latest_wins: bool, made: float) -> None:
        self.stream = stream
        self.path = path
        self.code = code
        self.headers = [(n, v) for n, v in headers if n != wire.MADE_HEADER] + \
            [(wire.MADE_HEADER, b"%.3f" % (made,))]
        self.body = body
        self.latest_wins = latest_wins
        self.made = made
        self.failed = False
        self._watchers: list[Callable[[], None]] = []

    def grew(self) -> None:
        """The body grew or completed: every push of it sends what is new."""
        for watcher in list(self._watchers):
            watcher()

    def fail(self) -> None:
        """The body will never be complete: every push of it is cut short."""
        self.failed = True
        self.grew()

    def watch(self, watcher: Callable[[], None]) -> None:
        self._watchers.append(watcher)

    def unwatch(self, watcher: Callable[[], None]) -> None:
        if watcher in self._watchers:
            self._watchers.remove(watcher)

    @property
    def watched(self) -> bool:
        """Whether it is being pushed (a push of it is open on some connection)."""
        return bool(self._watchers)


@implementer(IGrowingBody)
class Complete:
    """An :class:`~fbstream.httpbody.IGrowingBody` that is whole from the start (a manifest version)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.complete = True


def whole(stream: str, path: bytes, code: int, headers: list[tuple[bytes, bytes]], body: bytes,
          *, latest_wins: bool, made: float) -> Offer:
    """An offer of a complete body."""
    return Offer(stream, path, code, headers, Complete([body] if body else []), latest_wins=latest_wins, made=made)


class IPushSource(TypingProtocol):
    """What a hub's objects come from: the encoder's videos, or a cache fed by the hop before."""

    def wanted(self, stream: str) -> None:
        """The first subscriber of ``stream`` came: start making offers of it."""

    def unwanted(self, stream: str) -> None:
        """The last subscriber of ``stream`` left."""

    def current(self, stream: str) -> list[Offer]:
        """What a new subscriber of ``stream`` is sent at once: the newest version of everything live."""


class PushHub:
    """
    The publisher's side of one hop: who subscribes to what, and every offer
    to each of them.
    """

    log = Logger()

    def __init__(self, tier: str, clock: IReactorTime, settings: wire.ChannelSettings,
                 secret: bytes | None, stall_timeout: float = 5.0) -> None:
        self.tier = tier
        self.clock = clock
        self.settings = settings
        self.secret = secret
        self.stall_timeout = stall_timeout
        self.source: IPushSource | None = None
        self.subscribers: dict[str, set[PublisherProtocol]] = {}
        self.connections: set[PublisherProtocol] = set()
        self.m_subscribers = pm.SUBSCRIBERS.labels(tier=tier)
        self.m_subscriptions = pm.SUBSCRIPTIONS.labels(tier=tier)

    def factory(self) -> Factory:
        return Factory.forProtocol(lambda: PublisherProtocol(self))

    def offer(self, offer: Offer) -> None:
        """Push ``offer`` to every subscriber of its stream."""
        for connection in list(self.subscribers.get(offer.stream, ())):
            connection.offer(offer)

    def wants(self, stream: str) -> bool:
        return bool(self.subscribers.get(stream))

    def _subscribed(self, connection: PublisherProtocol, stream: str) -> None:
        first = stream not in self.subscribers
        self.subscribers.setdefault(stream, set()).add(connection)
        self.m_subscriptions.inc()
        if self.source is not None:
            if first:
                self.source.wanted(stream)
            for offer in self.source.current(stream):
                connection.offer(offer)

    def _unsubscribed(self, connection: PublisherProtocol, stream: str) -> None:
        connections = self.subscribers.get(stream)
        if connections is None or connection not in connections:
            return
        connections.discard(connection)
        self.m_subscriptions.dec()
        if not connections:
            del self.subscribers[stream]
            if self.source is not None:
                self.source.unwanted(stream)

    def _connected(self, connection: PublisherProtocol) -> None:
        self.connections.add(connection)
        self.m_subscribers.set(len(self.connections))

    def _disconnected(self, connection: PublisherProtocol) -> None:
        self.connections.discard(connection)
        self.m_subscribers.set(len(self.connections))


class _Push:
    """One offer being pushed on one connection: where its body is read up to."""

    __slots__ = ("chunk", "id", "moved", "offer", "offset", "watcher")

    def __init__(self, push_id: int, offer: Offer, now: float) -> None:
        self.id = push_id
        self.offer = offer
        self.chunk = 0
        self.offset = 0
        #: When it last sent anything (or began): the stall clock.
        self.moved = now
        #: What its offer calls when its body grows.
        self.watcher: Callable[[], None] = lambda: None


class _ChannelProtocol(Protocol):
    """
    What both ends' protocols do alike: move bytes between the transport and
    the sans-IO core, tick the core (pings) on the clock, and close the
    transport once the core is closed.

    Closing waits for what the transport still holds to be sent (the
    GOAWAY saying why last), but only for ``ping_timeout``: a peer that does
    not read, the very one whose pings went unanswered, would otherwise
    keep the connection, its buffers and its place open for ever.
    """

    core: wire.Publisher | wire.Subscriber

    def __init__(self, clock: IReactorTime, tick_every: float) -> None:
        self.clock = clock
        self._tick_every = tick_every
        self._ticker: LoopingCall | None = None
        self._closing: IDelayedCall | None = None

    def _started(self) -> None:
        # Pushes are many small writes that must leave at once: no Nagle
        # (on the TCP transport, under TLS if there is TLS).
        transport = self.transport
        while transport is not None:
            if hasattr(transport, "setTcpNoDelay"):
                transport.setTcpNoDelay(True)
                break
            transport = getattr(transport, "transport", None)
        self.core.start()
        self._flush()
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = self.clock
        self._ticker.start(self._tick_every, now=False)

    def dataReceived(self, data: bytes) -> None:
        self._handle(self.core.receive(data))
        self._flush()

    def connectionLost(self, reason: Failure = Failure(Exception("lost"))) -> None:  # noqa: B008
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        if self._closing is not None and self._closing.active():
            self._closing.cancel()
        if self.core.closed is None:
            self._handle(self.core.close("the connection was lost: %s" % (reason.getErrorMessage(),)))
        self._lost()

    def _tick(self) -> None:
        self._handle(self.core.tick(self.clock.seconds()))
        self._flush()

    def _flush(self) -> None:
        data = self.core.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)
        if self.core.closed is not None and self.transport is not None and self._closing is None:
            self.transport.loseConnection()
            self._closing = self.clock.callLater(self.core.settings.ping_timeout, self._abort)

    def _abort(self) -> None:
        """The peer has not taken what was left to send it, our goodbye included: cut the connection."""
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def _handle(self, events: list[wire.Event]) -> None:
        raise NotImplementedError

    def _lost(self) -> None:
        raise NotImplementedError


@implementer(IPushProducer)
class PublisherProtocol(_ChannelProtocol):
    """One subscriber's connection to a :class:`PushHub`."""

    log = Logger()

    def __init__(self, hub: PushHub) -> None:
        super().__init__(hub.clock, min(hub.settings.ping_interval, hub.stall_timeout / 2))
        self.hub = hub
        self.core: wire.Publisher = wire.Publisher(hub.settings, secret=hub.secret)
        self.pushes: dict[int, _Push] = {}
        #: The open push of each manifest and playlist, by path (the one a newer version supersedes).
        self.latest: dict[bytes, _Push] = {}
        #: Offers that could not be pushed yet, in order, by path: manifests
        #: and playlists (a newer version replaces the one waiting), and
        #: media. Each is started from its head, so a connection that is
        #: behind costs no more per offer than one that is not.
        self.waiting_versions: dict[bytes, Offer] = {}
        self.waiting_media: dict[bytes, Offer] = {}
        #: Open pushes with bytes to send that found no room: the ones a
        #: transport drained or a window opened sends on (a push waiting
        #: for its body to grow is sent on by its offer).
        self.stalled: dict[int, _Push] = {}
        self.paused = False
        self._peer = "?"

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        self._peer = "%s:%s" % (getattr(peer, "host", "?"), getattr(peer, "port", "?"))
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self.hub._connected(self)
        self._started()

    def _lost(self) -> None:
        for push in list(self.pushes.values()):
            self._forget(push)
        self.waiting_versions.clear()
        self.waiting_media.clear()
        # However the core closed (a GOAWAY of ours included), the hub
        # forgets every subscription this connection held.
        for stream in [s for s, connections in self.hub.subscribers.items() if self in connections]:
            self.hub._unsubscribed(self, stream)
        self.hub._disconnected(self)

    # IPushProducer: the transport's buffer is full, or drained again.
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._pump()
        self._flush()

    def stopProducing(self) -> None:
        self.paused = True

    def offer(self, offer: Offer) -> None:
        """Push ``offer`` now if this connection can; a latest-wins one otherwise waits (replacing an older one)."""
        if offer.latest_wins:
            older = self.latest.get(offer.path)
            if older is not None and not self._sent_all(older):
                self._give_up(older, superseded=True)
            self.waiting_versions.pop(offer.path, None)
        # Manifests and playlists go first, ahead of media waiting (they are
        # small, and what every viewer's next request depends on); media in
        # order, behind what already waits.
        behind = bool(self.waiting_media) and not offer.latest_wins
        if behind or not self._start(offer):
            # A full transport or the peer's stream limit holds pushes back
            # a moment (a drained transport, or a push ending, starts them);
            # only a subscriber that stays that far behind loses any.
            if offer.latest_wins:
                self.waiting_versions[offer.path] = offer
            elif len(self.waiting_media) >= self.hub.settings.max_pushes:
                pm.DROPPED.labels(tier=self.hub.tier).inc()
            else:
                self.waiting_media[offer.path] = offer
        self._flush()

    def _start(self, offer: Offer) -> bool:
        if self.paused or offer.failed:
            return False
        push_id = self.core.push(offer.stream, offer.path, offer.code, offer.headers)
        if push_id is None:
            return False
        push = self.pushes[push_id] = _Push(push_id, offer, self.hub.clock.seconds())
        pm.SENT.labels(tier=self.hub.tier).inc()
        push.watcher = lambda: self._grew(push)
        offer.watch(push.watcher)
        if offer.latest_wins:
            self.latest[offer.path] = push
        self._send(push)
        return True

    def _grew(self, push: _Push) -> None:
        """
        ``push``'s body grew (or completed, or failed): send what is new of
        it, and only of it (a connection carries a push per rendition per
        stream: every push's every chunk rescanning all of them costs the
        square of the streams); if that ended it, its place goes to what
        waits.
        """
        if self.pushes.get(push.id) is not push:
            return
        if self.paused:
            self.stalled[push.id] = push  # sent on when the transport drains
            return
        self._send(push)
        if push.id not in self.pushes:
            self._start_waiting()
        self._flush()

    def _pump(self) -> None:
        """
        Start the waiting manifests and playlists, send what the pushes that
        found no room may send now, then start the waiting media there is
        room for.
        """
        self._start_waiting(self.waiting_versions)
        for push in list(self.stalled.values()):
            if self.paused:
                return
            if self.pushes.get(push.id) is push:
                self._send(push)  # open pushes end, and free their places, only if they are sent
            else:
                self.stalled.pop(push.id, None)
        self._start_waiting()

    def _start_waiting(self, *queues: dict[bytes, Offer]) -> None:
        """Start waiting offers in order, manifests and playlists first, until one finds no room."""
        for queue in queues or (self.waiting_versions, self.waiting_media):
            while queue and not self.paused:
                path, offer = next(iter(queue.items()))
                if not offer.failed and not self._start(offer):
                    return  # no room: the rest wait their turn
                del queue[path]

    def _send(self, push: _Push) -> None:
        if push.offer.failed:
            self._give_up(push)
            return
        chunks = push.offer.body.chunks
        moved = False
        while not self.paused and push.chunk < len(chunks):
            room = self.core.room(push.id)
            if room <= 0:
                break
            data = chunks[push.chunk]
            piece = data[push.offset:push.offset + room] if push.offset or len(data) > room else data
            push.offset += len(piece)
            if push.offset >= len(data):
                push.chunk += 1
                push.offset = 0
            # The body's last bytes carry its end: a frame fewer per push.
            last = push.chunk >= len(chunks) and push.offer.body.complete
            self.core.send(push.id, piece, end=last)
            if last:
                self._forget(push)
                return
            moved = True
            self._flush()  # the transport may pause us here
        if moved:
            push.moved = self.hub.clock.seconds()
        if push.chunk >= len(chunks) and push.offer.body.complete:
            self.core.send(push.id, b"", end=True)
            self._forget(push)
        elif push.chunk < len(chunks):
            self.stalled[push.id] = push
        else:
            self.stalled.pop(push.id, None)

    def _has_unsent(self, push: _Push) -> bool:
        return push.chunk < len(push.offer.body.chunks) or push.offer.body.complete

    def _sent_all(self, push: _Push) -> bool:
        return push.chunk >= len(push.offer.body.chunks) and push.offer.body.complete

    def _give_up(self, push: _Push, superseded: bool = False) -> None:
        self.core.cancel(push.id)
        self._forget(push)
        if not superseded:
            pm.DROPPED.labels(tier=self.hub.tier).inc()

    def _forget(self, push: _Push) -> None:
        self.pushes.pop(push.id, None)
        self.stalled.pop(push.id, None)
        if self.latest.get(push.offer.path) is push:
            del self.latest[push.offer.path]
        push.offer.unwatch(push.watcher)

    def _tick(self) -> None:
        now = self.hub.clock.seconds()
        for push in list(self.pushes.values()):
            if not self._has_unsent(push):
                push.moved = now  # waiting for the body to grow is not a stall
            elif now - push.moved > self.hub.stall_timeout:
                self.log.info("{tier}: push of {path} to {peer} made no progress for {s:.1f} s: given up",
                              tier=self.hub.tier, path=push.offer.path.decode("latin-1"), peer=self._peer,
                              s=now - push.moved)
                self._give_up(push)
        self._start_waiting()  # in the places the pushes given up held
        super()._tick()

    def _handle(self, events: list[wire.Event]) -> None:
        for event in events:
            if isinstance(event, wire.Subscribed):
                self.hub._subscribed(self, event.stream)
            elif isinstance(event, wire.Unsubscribed):
                self.hub._unsubscribed(self, event.stream)
                for queue in (self.waiting_versions, self.waiting_media):
                    for path in [path for path, offer in queue.items() if offer.stream == event.stream]:
                        del queue[path]
            elif isinstance(event, wire.PushCancelled):
                push = self.pushes.get(event.push_id)
                if push is not None:
                    pm.REFUSED.labels(tier=self.hub.tier).inc()
                    self._forget(push)
            elif isinstance(event, wire.Writable):
                self._pump()
            elif isinstance(event, wire.Closed):
                self.log.info("{tier}: push subscriber {peer} closed: {reason}", tier=self.hub.tier,
                              peer=self._peer, reason=event.reason)
        self._start_waiting()  # in the places of pushes the subscriber refused


# The subscriber's side ------------------------------------------------------------


class IPushTarget(TypingProtocol):
    """Where one pushed body goes as it comes."""

    def data(self, data: bytes) -> None: ...

    def end(self) -> None: ...

    def fail(self) -> None: ...


class IPushSink(TypingProtocol):
    """What takes pushed responses in (a cache tier)."""

    def pushed(self, stream: str, path: bytes, code: int, headers: list[tuple[bytes, bytes]]) -> IPushTarget | None:
        """A pushed response's status and headers: where its body goes, or None to refuse it."""

    def stopped(self, stream: str) -> None:
        """``stream``'s pushes stopped flowing (the channel went down, or it was unsubscribed)."""


class SubscriberProtocol(_ChannelProtocol):
    """The connection of a :class:`PushClient` to its upstream."""

    log = Logger()

    def __init__(self, client: PushClient) -> None:
        super().__init__(client.clock, client.settings.ping_interval / 2)
        self.client = client
        self.core: wire.Subscriber = wire.Subscriber(client.settings, secret=client.secret)
        self.targets: dict[int, IPushTarget] = {}

    def connectionMade(self) -> None:
        self._started()
        self.client._connected(self)
        self._flush()

    def subscribe(self, stream: str) -> bool:
        ok = self.core.subscribe(stream)
        self._flush()
        return ok

    def unsubscribe(self, stream: str) -> None:
        self.core.unsubscribe(stream)
        self._flush()

    def _lost(self) -> None:
        for target in self.targets.values():
            target.fail()
        self.targets.clear()
        self.client._disconnected(self, self.core.closed or "lost")

    def _handle(self, events: list[wire.Event]) -> None:
        client = self.client
        for event in events:
            if isinstance(event, wire.PushStarted):
                target = client.sink.pushed(event.stream, event.path, event.code, event.headers)
                if target is None:
                    pm.REFUSED.labels(tier=client.tier).inc()
                    self.core.refuse(event.push_id)
                else:
                    self.targets[event.push_id] = target
            elif isinstance(event, wire.PushData):
                target = self.targets.get(event.push_id)
                if target is not None:
                    target.data(event.data)
            elif isinstance(event, wire.PushEnded):
                target = self.targets.pop(event.push_id, None)
                if target is not None:
                    target.end()
            elif isinstance(event, wire.PushReset):
                target = self.targets.pop(event.push_id, None)
                if target is not None:
                    target.fail()
            elif isinstance(event, wire.Accepted):
                client._accepted(event.stream)
            elif isinstance(event, wire.Rejected):
                client._rejected(self, event.stream, event.code)
            elif isinstance(event, wire.GoingAway):
                client._going_away(self, event.code)
            elif isinstance(event, wire.Closed):
                self.log.info("{tier}: push channel to {upstream} closed: {reason}", tier=client.tier,
                              upstream=client.description, reason=event.reason)


#: Seconds before a stream whose subscription was refused is asked for again.
RESUBSCRIBE = 5.0


class IConnector(TypingProtocol):
    """Connects a protocol factory to the upstream (an endpoint, with TLS or not)."""

    def connect(self, factory: Factory) -> Any: ...


class PushClient:
    """
    One long-lived push connection to one upstream, and the streams this
    tier wants pushed over it: a stream is subscribed when :meth:`want` is
    first called for it, and unsubscribed once no one has wanted it for
    ``idle_timeout``. A lost connection is made again with jittered
    exponential backoff, and every wanted stream subscribed again; while it
    is down the tier's fetches carry on as before (the fallback).
    """

    log = Logger()

    def __init__(self, tier: str, clock: IReactorTime, connector: IConnector, description: str,
                 settings: wire.ChannelSettings, secret: bytes | None, sink: IPushSink,
                 idle_timeout: float = 30.0, backoff: tuple[float, float] = (0.25, 10.0)) -> None:
        self.tier = tier
        self.clock = clock
        self.connector = connector
        self.description = description
        self.settings = settings
        self.secret = secret
        self.sink = sink
        self.idle_timeout = idle_timeout
        self.backoff = backoff
        #: Stream -> when it was last wanted, least recently first.
        self.wanted: OrderedDict[str, float] = OrderedDict()
        #: Streams the upstream refused, and when (asked again later).
        self._refused: dict[str, float] = {}
        #: Streams whose pushes flow now (the upstream accepted them).
        self.flowing: set[str] = set()
        #: Streams kept subscribed however long since they were asked for.
        self.held: set[str] = set()
        self.connection: SubscriberProtocol | None = None
        self._connecting = False
        self._retry: IDelayedCall | None = None
        self._failures = 0
        self._stopped = False
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = clock
        self._fallback_since: float | None = None
        self.m_fallback = pm.FALLBACK_SECONDS.labels(tier=tier)

    def start(self) -> None:
        self._stopped = False
        self._sweeper.start(1.0, now=False)

    def stop(self) -> None:
        self._stopped = True
        if self._sweeper.running:
            self._sweeper.stop()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self.connection is not None and self.connection.transport is not None:
            self.connection.transport.loseConnection()

    def want(self, stream: str) -> None:
        """Someone asked for ``stream``: keep it subscribed (subscribe it now if it is not)."""
        now = self.clock.seconds()
        known = stream in self.wanted
        self.wanted[stream] = now
        self.wanted.move_to_end(stream)
        if known:
            return
        # Least recently asked out first (never a relay's held one): viewers
        # asking for made-up ids cannot keep real streams unsubscribed.
        for old in list(self.wanted):
            if len(self.wanted) <= self.settings.max_subscriptions:
                break
            if old not in self.held and old != stream:
                self._drop(old)
        if self.connection is not None:
            self.connection.subscribe(stream)
        else:
            self._fallback_began(now)
            self._connect()

    def hold(self, stream: str) -> None:
        """Keep ``stream`` subscribed until :meth:`release`, asked for or not (a relay's own subscribers)."""
        self.held.add(stream)
        self.want(stream)

    def release(self, stream: str) -> None:
        self.held.discard(stream)

    def pushing(self, stream: str) -> bool:
        """Whether ``stream``'s pushes flow now."""
        return stream in self.flowing

    def _connect(self) -> None:
        if self._connecting or self.connection is not None or self._stopped or not self.wanted:
            return
        if self._retry is not None and self._retry.active():
            return
        self._connecting = True
        d = self.connector.connect(Factory.forProtocol(lambda: SubscriberProtocol(self)))
        d.addErrback(self._connect_failed)

    def _connect_failed(self, failure: Failure) -> None:
        self._connecting = False
        self._failures += 1
        if self._failures in (1, 5) or self._failures % 60 == 0:
            self.log.warn("{tier}: push channel to {upstream}: {error} (fetching meanwhile)", tier=self.tier,
                          upstream=self.description, error=failure.getErrorMessage())
        self._schedule()

    def _schedule(self) -> None:
        if self._stopped:
            return
        low, high = self.backoff
        delay = min(high, low * 2 ** min(self._failures, 16))
        self._retry = self.clock.callLater(random.uniform(delay / 2, delay), self._connect)

    def _connected(self, connection: SubscriberProtocol) -> None:
        self._connecting = False
        self.connection = connection
        for stream in list(self.wanted):
            connection.subscribe(stream)

    def _accepted(self, stream: str) -> None:
        self._failures = 0
        if stream in self.wanted:
            self.flowing.add(stream)
        self._fallback_ended()

    def _rejected(self, connection: SubscriberProtocol, stream: str, code: int) -> None:
        self._not_flowing(stream)
        if code and connection.core.closed is None:
            self.log.warn("{tier}: {upstream} refused the push subscription to {stream}: {code}", tier=self.tier,
                          upstream=self.description, stream=stream, code=code)
            # Fetched meanwhile; asked again (every RESUBSCRIBE s) while it is wanted.
            self._refused[stream] = self.clock.seconds()

    def _going_away(self, connection: SubscriberProtocol, code: int) -> None:
        if self.connection is connection:
            self.connection = None
            self._not_flowing(*self.flowing)
            self._fallback_began(self.clock.seconds())
            if code == 0:
                self._connect()  # an orderly goodbye (stream ids ran out): at once
            else:
                self._failures += 1
                self._schedule()

    def _disconnected(self, connection: SubscriberProtocol, why: str) -> None:
        if self.connection is connection:
            self.connection = None
            self._not_flowing(*self.flowing)
            self._failures += 1
            if self.wanted:
                self._fallback_began(self.clock.seconds())
            self._schedule()

    def _drop(self, stream: str) -> None:
        """Stop wanting ``stream``: unsubscribe it."""
        self.wanted.pop(stream, None)
        self._refused.pop(stream, None)
        self._not_flowing(stream)
        if self.connection is not None:
            self.connection.unsubscribe(stream)

    def _not_flowing(self, *streams: str) -> None:
        for stream in streams:
            if stream in self.flowing:
                self.flowing.discard(stream)
                self.sink.stopped(stream)

    def _sweep(self) -> None:
        now = self.clock.seconds()
        for stream, last in list(self.wanted.items()):
            if now - last > self.idle_timeout and stream not in self.held:
                self._drop(stream)
        for stream, when in list(self._refused.items()):
            if stream not in self.wanted:
                del self._refused[stream]
            elif now - when >= RESUBSCRIBE and self.connection is not None:
                del self._refused[stream]
                self.connection.subscribe(stream)
        if self._fallback_since is not None:
            self.m_fallback.inc(now - self._fallback_since)
            self._fallback_since = now if self.wanted and self.connection is None else None

    def _fallback_began(self, now: float) -> None:
        if self._fallback_since is None:
            self._fallback_since = now

    def _fallback_ended(self) -> None:
        if self._fallback_since is not None:
            self.m_fallback.inc(self.clock.seconds() - self._fallback_since)
            self._fallback_since = None
