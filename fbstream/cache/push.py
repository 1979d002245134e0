"""
A cache tier on the push channel (:mod:`fbstream.push`): pushed answers go
into its :class:`~fbstream.cache.engine.CachingResource` as fetched ones
would, and at the origin, which is pushed to by the encoders and pushes to
the PoPs, each is offered on to the subscribers of its stream as it comes in.

A push reset upstream before its object is whole (given up there, or its
connection lost) is fetched instead for whoever reads it here, the relay's
subscribers included (:meth:`~fbstream.cache.engine.Fetch.reset`): what
the relay offers on is the object this tier holds, so the next hop's push
of it just goes on growing from the fetch, as its viewers' responses do.
"""

from __future__ import annotations

from collections import OrderedDict

from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from fbstream.cache.engine import MANIFEST_SUFFIXES, CachedObject, CachingResource, Fetch, _Body
from fbstream.push import metrics as pm
from fbstream.push.channel import IPushTarget, Offer, PushClient, PushHub
from fbstream.push.core import made_at

#: Objects a relay remembers per stream for new subscribers (manifests,
#: playlists, init segments and the segments still growing).
MAX_REMEMBERED = 64


class _Target:
    """
    One pushed body on its way into the cache (and, read by the relay, on
    to the next hop). Its push lag is observed once this tier holds the
    object: whole, or a segment still growing from its first chunk on, for
    that is when each is first served here (a growing segment's version is
    made, and stamped, as the encoder cuts that chunk).
    """

    def __init__(self, sink: CachePushSink, fetch: Fetch, body: _Body, made: float) -> None:
        self.sink = sink
        self.fetch = fetch
        self.body = body
        #: When its version was made (0: not said, or its lag observed already).
        self.made = made

    def data(self, data: bytes) -> None:
        self.fetch._data(self.body, data)
        if self.fetch.growing:
            self._held()

    def end(self) -> None:
        self.fetch._body_ended(self.body, Failure(ResponseDone()))
        self._held()

    def fail(self) -> None:
        self.fetch.reset(self.body)

    def _held(self) -> None:
        obj = self.fetch.obj
        if self.made and obj is not None and (obj.complete or (self.fetch.growing and obj.size)):
            self.sink.m_lag.observe(max(0.0, self.sink.cache.clock.seconds() - self.made))
            self.made = 0.0


class _RelayReader:
    """
    Reads a fetch for the relay, as a viewer does: tells the offer its
    object grew, or failed. It reads while the offer is being pushed.
    """

    def __init__(self, offer: Offer) -> None:
        self.offer = offer

    @property
    def reading(self) -> bool:
        return self.offer.watched

    def headers(self, obj: CachedObject) -> None:
        self.offer.grew()

    def more(self) -> None:
        self.offer.grew()

    def fail(self, code: int, message: str) -> None:
        self.offer.fail()


class CachePushSink:
    """
    Pushed answers into ``cache``; with a ``relay`` hub, offered on to its
    subscribers too (the origin).
    """

    def __init__(self, cache: CachingResource, relay: PushHub | None = None) -> None:
        self.cache = cache
        self.relay = relay
        #: Stream -> path -> the newest offer of it still worth sending a new subscriber.
        self.remembered: dict[str, OrderedDict[bytes, Offer]] = {}
        self.m_received = pm.RECEIVED.labels(tier=cache.tier)
        self.m_lag = pm.LAG.labels(tier=cache.tier)

    def pushed(self, stream: str, path: bytes, code: int, headers: list[tuple[bytes, bytes]]) -> IPushTarget | None:
        fetch = self.cache.pushed(path, code, headers)
        relaying = self.relay is not None and self.relay.wants(stream)
        if fetch is None:
            if relaying:
                self._relay_held(stream, path, headers)
            return None
        self.m_received.inc()
        body = fetch.answered(code, headers)
        if relaying and fetch.obj is not None:
            fetch.viewers.append(_RelayReader(self._offer(stream, fetch.obj, headers)))
        return _Target(self, fetch, body, made_at(headers))

    def _offer(self, stream: str, obj: CachedObject, headers: list[tuple[bytes, bytes]]) -> Offer:
        """Offer ``obj`` on to the relay's subscribers, stamped as the push that brought it was."""
        assert self.relay is not None
        offer = Offer(stream, obj.key, obj.code, obj.headers, obj, latest_wins=obj.key.endswith(MANIFEST_SUFFIXES),
                      made=made_at(headers))
        self._remember(offer)
        self.relay.offer(offer)
        return offer

    def _relay_held(self, stream: str, path: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """
        A push refused here because this tier holds the object already (or
        is fetching it): the subscribers downstream are offered this tier's
        copy instead, growing as its fetch reads it.
        """
        if path.endswith(MANIFEST_SUFFIXES):
            return  # what is held may be older than the version refused: never offered as the newest
        stored = self.cache.store.get(path, self.cache.clock.seconds())
        if stored is not None:
            self._offer(stream, stored, headers)
            return
        fetch = self.cache.fetches.get(path)
        if fetch is not None and fetch.obj is not None and not fetch.done:
            fetch.viewers.append(_RelayReader(self._offer(stream, fetch.obj, headers)))

    def _remember(self, offer: Offer) -> None:
        kept = self.remembered.setdefault(offer.stream, OrderedDict())
        kept.pop(offer.path, None)
        kept[offer.path] = offer
        # Whole segments and parts are fetched like any other: only what is
        # still growing, the init segments and the newest versions are kept.
        for path, old in list(kept.items()):
            growing_or_versioned = old.latest_wins or path.endswith(b".mp4") or not old.body.complete
            if old.failed or not growing_or_versioned:
                del kept[path]
        while len(kept) > MAX_REMEMBERED:
            kept.popitem(last=False)

    # IPushSource, for the relay hub: what the hop upstream is asked for.

    def stopped(self, stream: str) -> None:
        """``stream``'s pushes stopped (the channel is down, or it was unsubscribed)."""
        self.cache.pushes_stopped(stream)

    def current(self, stream: str) -> list[Offer]:
        return [o for o in self.remembered.get(stream, {}).values() if not o.failed]

    def forget(self, stream: str) -> None:
        self.remembered.pop(stream, None)


class RelaySource:
    """The origin's push source: its PoPs' subscriptions, passed on to the encoders."""

    def __init__(self, sink: CachePushSink, upstreams: list[PushClient]) -> None:
        self.sink = sink
        self.upstreams = upstreams

    def wanted(self, stream: str) -> None:
        for client in self.upstreams:
            client.hold(stream)

    def unwanted(self, stream: str) -> None:
        for client in self.upstreams:
            client.release(stream)
        self.sink.forget(stream)

    def current(self, stream: str) -> list[Offer]:
        return self.sink.current(stream)
