"""
The cache engine of the origin and the PoPs: an HTTP cache of the playback
URLs that coalesces requests.

Of many concurrent requests for an object that is not cached, one goes
upstream (a :class:`Fetch`); the rest wait on it and are streamed the same
bytes as they arrive - read-while-writer - including a segment the encoder is
still producing, so every waiter gets each chunk as soon as the cache does.
If the first byte does not come within ``lock_timeout``, at most one more
upstream request is let through (never the whole herd), and whichever answers
first serves everyone. An upstream error or timeout answers every waiter at
once (502/504) and caches nothing complete. A waiter that disconnects cancels
nothing; the last one to leave cancels the upstream request.

The store is an LRU bounded in bytes. Freshness comes from the upstream's
``Cache-Control``: immutable segments stay until evicted, manifests for their
short ``max-age``, 404s for theirs (negative caching), each counted from
when it left the encoder: every tier sends ``Age`` and honours the one it
receives, as HTTP caches do, so lifetimes never add up. A segment served as
``X-FBStream-Segment: growing`` is streamed to its waiters and stored as
complete only once its body ends cleanly.

Each waiter is streamed the object by a :class:`~fbstream.httpbody.BodyProducer`,
which keeps only its position in the object's chunk list, so a slow viewer
costs no memory beyond its transport's bounded buffer: its transport pauses
it (producer and consumer) and it resumes where it was; one paused for
longer than ``stall_timeout`` is dropped (``DROPPED_VIEWERS``).

An LL-HLS blocking playlist reload is its own object, fetched as any other,
except at a tier a stream's pushes flow to: there the playlist version held
answers it if it says it can (:mod:`fbstream.live.blocking`), a HIT; one it
cannot yet answer waits (coalesced, at most ``max_blocked`` at once, for
``push_wait``) for a pushed version that can, then is fetched. So does a
segment asked for a moment before its push; either is fetched at once if
its stream's pushes stop meanwhile (:meth:`CachingResource.pushes_stopped`).

An object pushed by the tier upstream (:meth:`CachingResource.pushed`) is
read the same way. If its push is reset before it is whole, whoever is
reading it carries on from a fetch of it, as if it had never been pushed:
the bytes held already are read again, checked and skipped, and each
reader goes on from the byte it reached (:meth:`Fetch.reset`).
"""

from __future__ import annotations

import heapq
import itertools
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from typing import Protocol as TypingProtocol

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import TimeoutError as TwistedTimeout
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from fbstream.cache import metrics as cm
from fbstream.config import default
from fbstream.httpbody import BodyProducer, IGrowingBody, Outcome
from fbstream.live.blocking import BLOCKED_CACHE_CONTROL, HLS_EDGE_HEADER, PlaylistEdge, edge_of
from fbstream.live.urls import LIVE_EDGE_HEADER, MEDIA_PATH, PLAYBACK_PATH, playlist_key, playlist_query

#: Response headers passed from upstream to viewers (and kept in the cache).
PASSED_HEADERS = (b"content-type", b"cache-control", b"x-fbstream-segment", b"access-control-allow-origin",
                  LIVE_EDGE_HEADER, HLS_EDGE_HEADER)
#: Segments past the live edge a tier lets through upstream: the encoder's
#: own margin (encoder.hold_segments, 2) and one for the clock.
PAST_EDGE_MARGIN = 3
#: Streams whose live edge a tier remembers (the least recently asked forgotten).
MAX_EDGES = 10_000
IMMUTABLE = b"public, max-age=31536000, immutable"
_MAX_AGE = re.compile(rb"max-age=(\d+)")
_AGE = re.compile(rb"^\s*(\d+)\s*$")
#: How much longer than its max-age a pinned object is kept fresh (see
#: :meth:`CachingResource.pin`): the encoder pushes every manifest at least
#: once a second, so one not replaced by then means its pushes have stopped
#: somewhere upstream, and it is fetched again.
PIN_SLACK = 3.0
#: What the PoP's cache layer says of a manifest or playlist to the proxy
#: layers in front (``manifests_uncached``): coalesce requests for it, keep none.
UNCACHED_DOWNSTREAM = b"public, max-age=0"
#: How a manifest's or playlist's path ends (a segment's never does).
MANIFEST_SUFFIXES = (b".mpd", b".m3u8")
#: An ``Age`` beyond this is nonsense (a year): taken as "already stale".
MAX_AGE_HEADER = 365 * 86400
#: LL-HLS blocking reloads a tier holds at once waiting for a pushed
#: playlist version to answer them (more are fetched at once, as without pushes).
MAX_BLOCKED = 4096


@attrs.define
class CacheSettings:
    """The ``cache.*`` settings (help and defaults in :mod:`fbstream.config`)."""

    max_bytes: int = default("cache.max_bytes")
    lock_timeout: float = default("cache.lock_timeout")
    upstream_timeout: float = default("cache.upstream_timeout")
    stall_timeout: float = default("cache.stall_timeout")
    max_fetches: int = default("cache.max_fetches")


@implementer(IGrowingBody)
class CachedObject:
    """An object in the store, or being fetched into it."""

    __slots__ = ("born", "chunks", "code", "complete", "expires", "front_head", "headers", "key", "size", "version")

    def __init__(self, key: bytes, code: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.key = key
        self.code = code
        self.headers = headers
        self.chunks: list[bytes] = []
        self.size = 0
        self.complete = False
        self.expires = 0.0
        #: When its age was 0: when it reached us, less the ``Age`` it came
        #: with (the time it already spent in caches upstream). A lifetime
        #: counts from here at every tier, so tiers never add up.
        self.born = 0.0
        #: The order its answer came in at this tier: of two versions of one
        #: URL, the later answered is the newer (a push may overtake a fetch).
        self.version = 0
        #: The head of a whole HIT answer of it as the viewers' lane sends
        #: it, less Age and Date: made once, by the lane, at the first hit.
        self.front_head: bytes | None = None

    def age(self, now: float) -> int:
        return max(0, int(now - self.born))


def freshness(headers: list[tuple[bytes, bytes]], growing: bool) -> float:
    """Seconds the object may be served from the cache (0: not at all)."""
    if growing:
        return 365 * 86400.0  # stored only once complete; complete segments are immutable
    for name, value in headers:
        if name == b"cache-control":
            if b"no-store" in value or b"no-cache" in value or b"private" in value:
                return 0.0
            match = _MAX_AGE.search(value)
            if match:
                return float(match.group(1))
    return 0.0


def _age_of(values: list[bytes]) -> float:
    """The seconds an ``Age`` header says (the first valid one; garbage counts as 0)."""
    for value in values:
        match = _AGE.match(value[:64])
        if match:
            digits = match.group(1).lstrip(b"0") or b"0"
            return float(MAX_AGE_HEADER if len(digits) > 10 else min(int(digits), MAX_AGE_HEADER))
    return 0.0


#: What an object costs the store beyond its body and headers: the entry,
#: its key's object, the chunk list (measured: about 400 B for a 404).
ENTRY_OVERHEAD = 320


def _track_of(media: re.Match[bytes]) -> tuple[tuple[bytes, bytes], tuple[int, int]]:
    """A media path's (stream, rendition), and where in it it is: (segment, part; -1 for the whole segment)."""
    part = media.group("part")
    return ((media.group("stream"), media.group("rendition")),
            (int(media.group("number")), int(part) if part is not None else -1))


def cost(obj: CachedObject) -> int:
    """The bytes an object holds in the store, a body-less 404 included."""
    return obj.size + len(obj.key) + sum(len(n) + len(v) for n, v in obj.headers) + ENTRY_OVERHEAD


class Store:
    """
    The complete objects, LRU, bounded in bytes (each at its real cost).
    Objects that expire within a day are also purged once expired, whether
    or not anyone asks for them again.
    """

    def __init__(self, max_bytes: int, tier: str) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._objects: OrderedDict[bytes, CachedObject] = OrderedDict()
        self._costs: dict[bytes, int] = {}
        #: (expiry, key) of short-lived objects, soonest first.
        self._expiring: list[tuple[float, bytes]] = []
        self._tier = tier

    def get(self, key: bytes, now: float) -> CachedObject | None:
        obj = self._objects.get(key)
        if obj is None:
            return None
        if obj.expires <= now:
            self._remove(key)
            return None
        self._objects.move_to_end(key)
        return obj

    def put(self, obj: CachedObject, now: float | None = None) -> None:
        if now is not None:
            self.purge(now)
        size = cost(obj)
        if size > self.max_bytes // 4:
            return  # one object may not push out most of the cache
        if obj.key in self._objects:
            self._remove(obj.key)
        self._objects[obj.key] = obj
        self._costs[obj.key] = size
        self.size += size
        if now is not None and obj.expires < now + 86400:
            heapq.heappush(self._expiring, (obj.expires, obj.key))
        while self.size > self.max_bytes and self._objects:
            key = next(iter(self._objects))
            self._remove(key)
            cm.EVICTIONS.labels(tier=self._tier).inc()
        cm.STORED_BYTES.labels(tier=self._tier).set(self.size)

    def holds_newer(self, key: bytes, version: int) -> bool:
        """Whether the object held under ``key`` is a newer version than ``version``."""
        obj = self._objects.get(key)
        return obj is not None and obj.version > version

    def expire(self, key: bytes, lifetime: float, now: float) -> None:
        """The object held under ``key`` (if any) expires ``lifetime`` after it was born."""
        obj = self._objects.get(key)
        if obj is None:
            return
        obj.expires = obj.born + lifetime
        if obj.expires <= now:
            self._remove(key)
        elif obj.expires < now + 86400:
            heapq.heappush(self._expiring, (obj.expires, key))

    def purge(self, now: float) -> None:
        """Remove what has expired of the short-lived objects."""
        expiring = self._expiring
        while expiring and expiring[0][0] <= now:
            expires, key = heapq.heappop(expiring)
            obj = self._objects.get(key)
            if obj is not None and obj.expires == expires:
                self._remove(key)
        if len(expiring) > 2 * len(self._objects) + 1024:  # stale entries of replaced objects
            self._expiring = [(e, k) for e, k in expiring if k in self._objects]
            heapq.heapify(self._expiring)

    def _remove(self, key: bytes) -> None:
        self._objects.pop(key)
        self.size -= self._costs.pop(key)
        cm.STORED_BYTES.labels(tier=self._tier).set(self.size)

    def __len__(self) -> int:
        return len(self._objects)


class Reader(TypingProtocol):
    """What reads a fetch as it comes: a :class:`Viewer`, or a relay offering it on (:mod:`fbstream.cache.push`)."""

    def headers(self, obj: CachedObject) -> None:
        """The object's status and headers are known."""

    def more(self) -> None:
        """The object grew or completed."""

    def fail(self, code: int, message: str) -> None:
        """The object will never be complete."""

    @property
    def reading(self) -> bool:
        """Whether the object's bytes are still wanted (a fetch is made again for them)."""


class Viewer:
    """
    One request for an object: waiting for its headers, then streamed it by
    a :class:`BodyProducer` (which drops it if it stops reading).
    """

    #: A viewer reads until it leaves the fetch.
    reading = True

    def __init__(self, cache: CachingResource, request: Request, status: bytes) -> None:
        self.cache = cache
        self.request = request
        self.status = status  # HIT, MISS or COALESCED, for X-Cache
        self.body: BodyProducer | None = None
        self.gone = False
        self.fetch: Fetch | None = None
        request.notifyFinish().addBoth(self._finished)

    def _finished(self, _: Any) -> None:
        self._leave()

    def _leave(self) -> None:
        """The viewer is gone (finished, disconnected or dropped): let its fetch know."""
        if not self.gone:
            self.gone = True
            self.cache._left(self)

    def headers(self, obj: CachedObject) -> None:
        """The object's status and headers are known: start the response."""
        if self.gone:
            return
        request = self.request
        request.setResponseCode(obj.code)
        for name, value in self.cache.answer_headers(obj, self.status):
            request.setHeader(name, value)
        request.setHeader(b"age", b"%d" % (obj.age(self.cache.clock.seconds()),))
        self.stream(obj)

    def stream(self, obj: CachedObject, skip: int = 0) -> None:
        """Stream the body, its first ``skip`` bytes already sent (the response's head too)."""
        self.body = BodyProducer(self.request, obj, self._body_ended, sent=self.cache.m_bytes_served.inc,
                                 clock=self.cache.clock, stall_timeout=self.cache.settings.stall_timeout,
                                 skip=skip)
        self.body.start()

    def more(self) -> None:
        """The object grew or completed."""
        if self.body is not None:
            self.body.more()

    def fail(self, code: int, message: str) -> None:
        """The fetch failed: an error if nothing was sent, else cut the body short."""
        if self.gone:
            return
        if self.body is not None:
            self.body.abort()
            return
        self.gone = True
        self.request.setResponseCode(code)
        self.request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        self.request.setHeader(b"cache-control", b"no-store")
        self.request.write(message.encode() + b"\n")
        self.request.finish()

    def _body_ended(self, _: BodyProducer, outcome: Outcome) -> None:
        if outcome is Outcome.STALLED:
            cm.DROPPED_VIEWERS.labels(tier=self.cache.tier).inc()
        self._leave()  # dropped is gone: the last one dropped cancels the fetch, as the last to hang up does


class _Discard(Protocol):
    transport: Any

    def connectionMade(self) -> None:
        self.transport.stopProducing()


class _Body(Protocol):
    def __init__(self, fetch: Fetch) -> None:
        self.fetch = fetch

    def dataReceived(self, data: bytes) -> None:
        self.fetch._data(self, data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008 (IProtocol's signature)
        self.fetch._body_ended(self, reason)


class _Held:
    """
    The bytes an object holds already, as a fetch reads them again: each
    byte up to ``size`` must be the one held, and is skipped; what follows
    continues the object.
    """

    def __init__(self, chunks: list[bytes], size: int) -> None:
        self.chunks = chunks
        #: Bytes held not read again yet.
        self.left = size
        self._chunk = 0
        self._offset = 0

    def past(self, data: bytes) -> bytes | None:
        """What of ``data`` lies beyond the bytes held (b"" if nothing), or None if it differs from them."""
        view = memoryview(data)
        while self.left and view:
            chunk = self.chunks[self._chunk]
            n = min(len(chunk) - self._offset, len(view), self.left)
            if memoryview(chunk)[self._offset:self._offset + n] != view[:n]:
                return None
            view = view[n:]
            self.left -= n
            self._offset += n
            if self._offset >= len(chunk):
                self._chunk += 1
                self._offset = 0
        return data if len(view) == len(data) else view.tobytes()


class Fetch:
    """One object being fetched from upstream for every viewer waiting on it."""

    log = Logger()

    def __init__(self, cache: CachingResource, key: bytes) -> None:
        self.cache = cache
        self.key = key
        self.viewers: list[Reader] = []
        self.obj: CachedObject | None = None
        self.growing = False
        self._attempts: list[Deferred[Any]] = []
        self._winner: _Body | None = None
        self._lock_timer: Any = None
        self._idle_timer: Any = None
        self._timed_out: set[int] = set()
        self._wait_timer: Any = None
        self.done = False
        #: Its answer was pushed by the tier upstream: it is stored whether
        #: or not anyone is reading it (no viewer leaving cancels it).
        self.pushed = False
        #: After its push was reset, what it held, as its fetch reads it again.
        self._held: _Held | None = None

    def start(self, wait: float = 0.0) -> None:
        """
        Fetch the object; after ``wait`` seconds if its push may come first
        (a segment of a stream whose pushes flow, asked for a moment before
        the push reaches this tier): it is fetched only if the push does not.
        """
        if wait > 0:
            self._wait_timer = self.cache.clock.callLater(wait, self._waited)
            return
        self._attempt()
        self._lock_timer = self.cache.clock.callLater(self.cache.settings.lock_timeout, self._lock_expired)

    def _waited(self) -> None:
        self._wait_timer = None
        if self.obj is None and not self.done:
            self.start()

    def stop_waiting(self) -> None:
        """The push it waits for will not come (its stream's pushes stopped): fetch it now."""
        if self._wait_timer is not None and self._wait_timer.active():
            self._wait_timer.cancel()
            self._waited()

    def _attempt(self) -> None:
        cache = self.cache
        cache.m_upstream.inc()
        if self.key.partition(b"?")[0].endswith(MANIFEST_SUFFIXES):
            cache.m_manifest_fetches.inc()
        d = cache.upstream(self.key)
        self._attempts.append(d)

        def timed_out() -> None:
            self._timed_out.add(id(d))
            d.cancel()

        timer = cache.clock.callLater(cache.settings.upstream_timeout, timed_out)

        def stop_timer(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        d.addBoth(stop_timer)
        d.addCallbacks(self._response, self._attempt_failed, errbackArgs=(d,))

    def _lock_expired(self) -> None:
        """No first byte yet: let exactly one more request through."""
        self._lock_timer = None
        if self.obj is None and not self.done and len(self._attempts) == 1:
            cm.LOCK_TIMEOUTS.labels(tier=self.cache.tier).inc()
            self._attempt()

    def _response(self, response: Any) -> None:
        if self.done or self._winner is not None:
            response.deliverBody(_Discard())  # the other attempt won
            return
        all_headers = [(name.lower(), value) for name, values in response.headers.getAllRawHeaders()
                       for value in values]
        if self._held is not None:
            response.deliverBody(self._refetched(response.code, all_headers))
            return
        response.deliverBody(self.answered(response.code, all_headers))

    def answered(self, code: int, all_headers: list[tuple[bytes, bytes]]) -> _Body:
        """
        The object's status and headers came (from a fetch, or pushed): it
        is this answer from now on. Returns what its body is fed to.
        """
        for timer in (self._lock_timer, self._wait_timer):
            if timer is not None and timer.active():
                timer.cancel()
        headers = [(name, value) for name, value in all_headers if name in PASSED_HEADERS]
        self.growing = any(n == b"x-fbstream-segment" and v == b"growing" for n, v in headers)
        # A growing segment is passed on as growing (no-store); once it is
        # complete it is stored, and served, as the immutable object it is.
        if self.growing:
            stored = [(n, v) for n, v in headers if n not in (b"cache-control", b"x-fbstream-segment")]
        else:
            stored = headers
        self.obj = CachedObject(self.key, code, headers)
        if code == 404:
            self.cache.learn_edge(self.key, [v for n, v in all_headers if n == LIVE_EDGE_HEADER])
        self.obj.born = self.cache.clock.seconds() - _age_of([v for n, v in all_headers if n == b"age"])
        self.obj.version = next(self.cache.versions)
        self._stored_headers = stored
        body = _Body(self)
        self._winner = body
        # Only now that this answer is the object: a cancelled attempt's
        # errback runs at once, and seeing no answer and no other attempt
        # it would fail every waiter (a 502 whenever the lock timeout had
        # let a second request through, that is, on a loaded machine).
        for other in self._attempts:
            if not other.called:
                other.cancel()
        self._reset_idle()
        for viewer in list(self.viewers):
            viewer.headers(self.obj)
        return body

    def answer_with(self, obj: CachedObject) -> None:
        """
        Answered at once by ``obj``, whole, which this tier holds (a blocking
        playlist reload by a pushed version of the playlist): as if fetched.
        """
        age = (b"age", b"%d" % (obj.age(self.cache.clock.seconds()),))
        body = self.answered(obj.code, obj.headers + [age])
        assert self.obj is not None
        self.obj.chunks.extend(obj.chunks)
        self.obj.size = obj.size
        self._body_ended(body, Failure(ResponseDone()))

    def reset(self, body: _Body) -> None:
        """
        The pushed answer ``body`` was reset upstream (a push given up, or
        its connection lost): it will never be complete. Whoever reads it
        carries on from a fetch of the object, one for them all: the bytes
        held already are read again, checked and skipped (an object's bytes
        are the same at every tier), and each reader goes on from the byte
        it reached. An object no one reads is dropped (the next request
        for it fetches it).
        """
        if body is not self._winner or self.done or self.obj is None:
            return
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        if not any(reader.reading for reader in self.viewers):
            self._abandon("the push was reset")
            return
        self.log.info("{tier}: the push of {key} was reset after {size} bytes: fetched instead, for the {n} reading it",
                      tier=self.cache.tier, key=self.key.decode("latin-1"), size=self.obj.size, n=len(self.viewers))
        self.pushed = False  # fetched now: its last viewer leaving cancels it
        self._winner = None
        self._held = _Held(self.obj.chunks, self.obj.size)
        self._attempt()

    def _refetched(self, code: int, all_headers: list[tuple[bytes, bytes]]) -> Protocol:
        """The fetch of an object whose push was reset answered: what its body is fed to."""
        assert self.obj is not None
        if code != self.obj.code:
            self._fail(502, "fetched after its push was reset, it answered %d, not %d" % (code, self.obj.code))
            return _Discard()
        # This answer is the object's now: as old, and as new, as it says.
        self.obj.born = self.cache.clock.seconds() - _age_of([v for n, v in all_headers if n == b"age"])
        self.obj.version = next(self.cache.versions)
        self._winner = _Body(self)
        self._reset_idle()
        return self._winner

    def _attempt_failed(self, failure: Failure, d: Deferred[Any]) -> None:
        if self.done or self._winner is not None:
            return
        if any(not other.called for other in self._attempts if other is not d):
            return  # the other attempt may still answer
        if id(d) in self._timed_out or failure.check(CancelledError, TwistedTimeout):
            self._fail(504, "upstream timed out")
        else:
            self._fail(502, "upstream failed: %s" % (failure.getErrorMessage(),))

    def _reset_idle(self) -> None:
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = self.cache.clock.callLater(self.cache.settings.upstream_timeout, self._idle)

    def _idle(self) -> None:
        self._idle_timer = None
        if not self.done and self._winner is not None:
            self._fail(504, "upstream stalled")
            transport = getattr(self._winner, "transport", None)
            if transport is not None:
                transport.stopProducing()

    def _data(self, body: _Body, data: bytes) -> None:
        if body is not self._winner or self.done or self.obj is None:
            return
        self._reset_idle()
        if self._held is not None and self._held.left:
            past = self._held.past(data)
            if past is None:
                self._fail(502, "fetched after its push was reset, it is not the object pushed")
                return
            if not past:
                return
            data = past
        self.obj.chunks.append(data)
        self.obj.size += len(data)
        self.cache.m_bytes_upstream.inc(len(data))
        for viewer in list(self.viewers):
            viewer.more()

    def _body_ended(self, body: _Body, reason: Failure) -> None:
        if body is not self._winner or self.done or self.obj is None:
            return
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        if not reason.check(ResponseDone):
            self._fail(502, "upstream body failed: %s" % (reason.getErrorMessage(),))
            return
        if self._held is not None and self._held.left:
            self._fail(502, "fetched after its push was reset, it is shorter than the object pushed")
            return
        obj = self.obj
        obj.complete = True
        self.done = True
        lifetime = freshness(self._stored_headers if self.growing else obj.headers, self.growing)
        if lifetime > 0:
            stored = CachedObject(obj.key, obj.code, self._stored_headers)
            if self.growing:
                stored.headers = stored.headers + [(b"cache-control", IMMUTABLE)]
            stored.chunks = [b"".join(obj.chunks)] if obj.chunks else []
            stored.size = obj.size
            stored.complete = True
            stored.born = obj.born
            stored.version = obj.version
            stored.expires = obj.born + lifetime
            now = self.cache.clock.seconds()
            if self.pushed and not self.growing and self.cache.pinned(self.key):
                # A pushed manifest or playlist is fresh for as long as its
                # stream's pushes flow: the next version replaces it. When
                # they stop, its own lifetime counts again (unpin).
                self.cache.pin(self.key, lifetime)
                stored.expires = now + lifetime + PIN_SLACK
            # Not already stale upstream, nor older than the version held
            # (a push may have overtaken this fetch).
            if stored.expires > now and not self.cache.store.holds_newer(self.key, stored.version):
                self.cache.store.put(stored, now)
                self.cache._new_version(stored)
        self.cache._fetch_done(self)
        for viewer in list(self.viewers):
            viewer.more()
        self.viewers = []

    def _fail(self, code: int, message: str) -> None:
        if self.done:
            return
        self.done = True
        cm.UPSTREAM_ERRORS.labels(tier=self.cache.tier).inc()
        self.log.warn("{tier}: {key} failed: {message}", tier=self.cache.tier,
                      key=self.key.decode("latin-1"), message=message)
        self.cache._fetch_done(self)
        for viewer in list(self.viewers):
            viewer.fail(code, message)
        self.viewers = []
        self._cancel_all()

    def cancel(self) -> None:
        """Nobody reads the object any more: stop fetching it."""
        if self.done:
            return
        cm.UPSTREAM_CANCELLED.labels(tier=self.cache.tier).inc()
        self._abandon("no one reads it")

    def _abandon(self, message: str) -> None:
        """Give the object up; a reader left that reads no more (a relay's offer not being pushed) fails."""
        self.done = True
        self.cache._fetch_done(self)
        for reader in list(self.viewers):
            reader.fail(502, message)
        self.viewers = []
        self._cancel_all()

    def _cancel_all(self) -> None:
        for timer in (self._lock_timer, self._idle_timer, self._wait_timer):
            if timer is not None and timer.active():
                timer.cancel()
        for d in self._attempts:
            if not d.called:
                d.cancel()
        if self._winner is not None:
            transport = getattr(self._winner, "transport", None)
            if transport is not None:
                transport.stopProducing()


class CachingResource(Resource):
    """
    A caching, coalescing reverse proxy of the playback URLs.

    :param upstream: ``upstream(path) -> Deferred[IResponse]``, a GET of the path
        on the next tier.
    """

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        tier: str,
        upstream: Callable[[bytes], Deferred[Any]],
        clock: IReactorTime,
        settings: CacheSettings,
    ) -> None:
        super().__init__()
        self.tier = tier
        self.upstream = upstream
        self.clock = clock
        self.settings = settings
        self.store = Store(settings.max_bytes, tier)
        self.fetches: dict[bytes, Fetch] = {}
        #: Stream id -> (the live edge a "not yet" answer gave, when it came).
        self.edges: OrderedDict[bytes, tuple[int, float]] = OrderedDict()
        self.m_past_edge = cm.PAST_THE_EDGE.labels(tier=tier)
        self.m_requests = cm.REQUESTS.labels(tier=tier)
        self.m_hits = cm.HITS.labels(tier=tier)
        self.m_misses = cm.MISSES.labels(tier=tier)
        self.m_coalesced = cm.COALESCED.labels(tier=tier)
        self.m_upstream = cm.UPSTREAM_FETCHES.labels(tier=tier)
        self.m_manifest_requests = cm.MANIFEST_REQUESTS.labels(tier=tier)
        self.m_manifest_fetches = cm.MANIFEST_FETCHES.labels(tier=tier)
        self.m_bytes_served = cm.BYTES_SERVED.labels(tier=tier)
        self.m_bytes_upstream = cm.BYTES_UPSTREAM.labels(tier=tier)
        #: Told the stream id of every request for a stream's objects (the
        #: push channel subscribes to what viewers ask for).
        self.asked: Callable[[str], None] | None = None
        #: Told the stream id and the connection of every viewer's request
        #: for a stream's manifests or media (the audience it is counted in).
        self.viewing: Callable[[bytes, Any], None] | None = None
        #: Whether a stream's pushes flow now (None: no push channel).
        self.pushing: Callable[[str], bool] | None = None
        #: How long a request for a segment of such a stream waits for its
        #: push before it is fetched (``push.wait``).
        self.push_wait = 0.0
        #: Whether the tiers in front are told to keep no manifest or
        #: playlist, only to coalesce requests for them (the PoP's cache
        #: layer, for its proxy layers: see :meth:`Viewer.headers`).
        self.manifests_uncached = False
        #: Stream -> its pinned versions' paths and own lifetimes.
        self._pins: OrderedDict[bytes, dict[bytes, float]] = OrderedDict()
        #: Numbers the answers in the order they come (CachedObject.version).
        self.versions = itertools.count(1)
        #: (stream, rendition) -> the newest segment pushed here and its
        #: newest part (-1: none yet; a segment is pushed before its parts).
        self._pushed_edge: OrderedDict[tuple[bytes, bytes], tuple[int, int]] = OrderedDict()
        #: Playlist -> the blocking reloads of it waiting for a version that
        #: answers them (their keys and directives), at most ``max_blocked``.
        self._blocked: dict[bytes, dict[bytes, tuple[int, int | None]]] = {}
        self._n_blocked = 0
        self.max_blocked = MAX_BLOCKED

    def answer_headers(self, obj: CachedObject, status: bytes) -> list[tuple[bytes, bytes]]:
        """The headers of an answer of ``obj`` (a ``status`` of HIT, MISS or COALESCED) but its ``Age``."""
        headers = list(obj.headers)
        headers.append((b"x-cache", b"%s %s" % (status, self.tier.encode())))
        if self.manifests_uncached and obj.key.endswith(MANIFEST_SUFFIXES):
            # One copy of each manifest per PoP, here: the proxy layers in
            # front (one per worker process or host) must ask again each
            # time. Each keeping a version for its max-age, a viewer whose
            # requests land on two of them would see the playlist go back
            # in time, or a stream that has started answer "not yet" on one
            # (a 404 kept from before); and a version pushed here replaces
            # one at once.
            headers.append((b"cache-control", UNCACHED_DOWNSTREAM))
        if obj.complete:
            headers.append((b"content-length", b"%d" % (obj.size,)))
        return headers

    def whole_hit(self, path: bytes, viewer: Any) -> CachedObject | None:
        """
        The whole object held for a plain ``GET`` of ``path`` (no query) by
        ``viewer`` (its connection), a segment's or another that is not a
        manifest, counted as :meth:`render_GET` counts a hit; or None, and
        :meth:`render_GET` answers it. What the viewers' lane answers without
        a request's machinery (:mod:`fbstream.cache.fastlane`).
        """
        if path.endswith(MANIFEST_SUFFIXES):
            return None
        obj = self.store.get(path, self.clock.seconds())
        if obj is None:
            return None
        self._asked(path, viewer)
        self.m_hits.inc()
        return obj

    def _asked(self, path: bytes, viewer: Any) -> None:
        """Count a request for the playback URL ``path``, and tell who follows what viewers ask."""
        self.m_requests.inc()
        if path.endswith(MANIFEST_SUFFIXES):
            self.m_manifest_requests.inc()
        if path.count(b"/") >= 3:
            stream = path.split(b"/", 3)[2]
            if self.asked is not None:
                self.asked(stream.decode())
            if self.viewing is not None and not path.endswith(b".json"):  # a comments reader is not a viewer
                self.viewing(stream, viewer)

    def render_GET(self, request: Request) -> bytes | int:
        path = request.path
        if not PLAYBACK_PATH.match(path):
            self.m_requests.inc()
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"not a playback URL\n"
        self._asked(path, request.channel)
        playlist, directives = path, None
        if path.endswith(b"/playlist.m3u8"):
            # An LL-HLS blocking reload is its own object: every viewer
            # blocked on the same part shares one request upstream.
            directives = playlist_query(request.args or {})
            path = playlist_key(path, directives)
        now = self.clock.seconds()
        media = MEDIA_PATH.match(path)
        if media is not None and self._past_the_edge(media.group("stream"), int(media.group("number")), now, request):
            return b"segment %s is not available yet\n" % (media.group(2),)
        answer, later = None, False
        if directives is not None and self.pinned(playlist):
            answer, later = self._blocked_reload(playlist, path, directives, now)
        obj = answer if answer is not None else self.store.get(path, now)
        if obj is not None:
            self.m_hits.inc()
            Viewer(self, request, b"HIT").headers(obj)
            return NOT_DONE_YET
        fetch = self.fetches.get(path)
        if fetch is None:
            if len(self.fetches) >= self.settings.max_fetches:
                request.setResponseCode(503)
                return b"too many objects in flight\n"
            self.m_misses.inc()
            fetch = self.fetches[path] = Fetch(self, path)
            viewer = Viewer(self, request, b"MISS")
            viewer.fetch = fetch
            fetch.viewers.append(viewer)
            if media is not None:
                pushed = self._push_coming(media)
            else:
                pushed = later and directives is not None and self._block(playlist, path, directives)
            fetch.start(self.push_wait if pushed else 0.0)
        else:
            self.m_coalesced.inc()
            viewer = Viewer(self, request, b"COALESCED")
            viewer.fetch = fetch
            fetch.viewers.append(viewer)
            if fetch.obj is not None:
                viewer.headers(fetch.obj)
        return NOT_DONE_YET

    def _past_the_edge(self, stream: bytes, number: int, now: float, request: Request) -> bool:
        """
        Whether ``number`` is further past the stream's live edge than any
        player may ask for, as far as a recent answer from upstream says: then
        it is answered here, as the encoder would, without a fetch (a flood of
        distinct far-future numbers would otherwise reach the encoder).
        """
        known = self.edges.get(stream)
        if known is None:
            return False
        self.edges.move_to_end(stream)
        edge = known[0] + int(now - known[1])  # one segment a second
        if number <= edge + PAST_EDGE_MARGIN:
            return False
        self.m_past_edge.inc()
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(LIVE_EDGE_HEADER, b"%d" % (edge,))
        return True

    def learn_edge(self, path: bytes, values: list[bytes]) -> None:
        """A "not yet" answer for ``path`` said where the live edge is."""
        media = MEDIA_PATH.match(path)
        if media is None or not values or not values[0].isdigit() or len(values[0]) > 18:
            return
        stream = media.group("stream")
        self.edges[stream] = (int(values[0]), self.clock.seconds())
        self.edges.move_to_end(stream)
        while len(self.edges) > MAX_EDGES:
            self.edges.popitem(last=False)

    def pushed(self, path: bytes, code: int, headers: list[tuple[bytes, bytes]]) -> Fetch | None:
        """
        The tier upstream pushed ``path``'s answer: it becomes the object
        exactly as a fetch's answer would (read while it is written, stored
        once whole). It answers a fetch of it still waiting for its first
        byte; it is refused (None) if the object is held already, or a fetch
        of it is already reading another answer. A manifest or playlist
        version replaces the one held.
        """
        if not PLAYBACK_PATH.match(path):
            return None
        now = self.clock.seconds()
        versioned = path.endswith(MANIFEST_SUFFIXES)
        if not versioned and self.store.get(path, now) is not None:
            return None
        fetch = self.fetches.get(path)
        if fetch is not None and (fetch.obj is not None or fetch.done):
            if not versioned:
                return None
            # A newer version than the one being fetched: read beside it
            # (no viewer joins it), and stored once whole, replacing it.
            fetch = Fetch(self, path)
            fetch.pushed = True
            return fetch
        if fetch is None:
            if len(self.fetches) >= self.settings.max_fetches:
                return None
            fetch = self.fetches[path] = Fetch(self, path)
        fetch.pushed = True
        media = MEDIA_PATH.match(path)
        if media is not None:
            track, at = _track_of(media)
            self._pushed_edge[track] = max(at, self._pushed_edge.get(track, (0, -1)))
            self._pushed_edge.move_to_end(track)
            while len(self._pushed_edge) > MAX_EDGES:
                self._pushed_edge.popitem(last=False)
        return fetch

    def _push_coming(self, media: re.Match[bytes]) -> bool:
        """
        Whether the segment or part ``media`` matched will be pushed here:
        its stream's pushes flow, and it is newer than any of its rendition
        pushed yet (an older one not held was made before the subscription,
        and is fetched at once). A part of the segment being pushed is
        newer than that segment's parts pushed so far.
        """
        if self.pushing is None or not self.pushing(media.group("stream").decode()):
            return False
        track, at = _track_of(media)
        return at > self._pushed_edge.get(track, (0, -1))

    def _blocked_reload(self, playlist: bytes, key: bytes, directives: tuple[int, int | None],
                        now: float) -> tuple[CachedObject | None, bool]:
        """
        A blocking reload (``key``) of a playlist whose pushes flow, as the
        version of it held here says: the answer, if that version satisfies
        it; else whether a later version may (then it waits for one to be
        pushed). A version that says nothing of it leaves it to upstream.
        """
        held = self.store.get(playlist, now)
        edge = edge_of(held.headers) if held is not None and held.code == 200 else None
        if held is None or edge is None:
            return None, False
        msn, part = directives
        if edge.satisfies(msn, part):
            return self._blocked_answer(held, key, edge), False
        return None, edge.later(msn)

    def _blocked_answer(self, held: CachedObject, key: bytes, edge: PlaylistEdge) -> CachedObject:
        """
        ``held``, a playlist version, as the answer to the blocking reload
        ``key``: with the lifetime the encoder's blocked answer would have
        (not the held one's, pinned or not), or, the broadcast over, the
        playlist's own (the encoder then ignores the directives).
        """
        headers = held.headers
        if not edge.ended:
            headers = [(n, v) for n, v in headers if n != b"cache-control"] + [(b"cache-control", BLOCKED_CACHE_CONTROL)]
        obj = CachedObject(key, held.code, headers)
        obj.chunks, obj.size, obj.complete = held.chunks, held.size, True
        obj.born, obj.expires, obj.version = held.born, held.expires, held.version
        return obj

    def _block(self, playlist: bytes, key: bytes, directives: tuple[int, int | None]) -> bool:
        """Whether the blocking reload ``key`` may wait for a playlist version to answer it (it then does)."""
        if self._n_blocked >= self.max_blocked:
            return False
        self._blocked.setdefault(playlist, {})[key] = directives
        self._n_blocked += 1
        return True

    def _unblock(self, key: bytes) -> None:
        playlist = key.split(b"?", 1)[0]
        waiting = self._blocked.get(playlist)
        if waiting is not None and waiting.pop(key, None) is not None:
            self._n_blocked -= 1
            if not waiting:
                del self._blocked[playlist]

    def _new_version(self, obj: CachedObject) -> None:
        """A new version of ``obj.key`` is held: the blocking reloads waiting that it satisfies are answered."""
        waiting = self._blocked.get(obj.key)
        edge = edge_of(obj.headers) if waiting and obj.code == 200 else None
        if waiting is None or edge is None:
            return
        for key, (msn, part) in list(waiting.items()):
            fetch = self.fetches.get(key)
            if fetch is not None and fetch.obj is None and not fetch.done and edge.satisfies(msn, part):
                fetch.answer_with(self._blocked_answer(obj, key, edge))

    def pinned(self, path: bytes) -> bool:
        """Whether ``path`` is a manifest or playlist of a stream whose pushes flow (see :attr:`pushing`)."""
        if not path.endswith(MANIFEST_SUFFIXES) or self.pushing is None or path.count(b"/") < 3:
            return False
        return self.pushing(path.split(b"/", 3)[2].decode())

    def pin(self, path: bytes, lifetime: float) -> None:
        stream = path.split(b"/", 3)[2]
        pins = self._pins.setdefault(stream, {})
        pins[path] = lifetime
        self._pins.move_to_end(stream)
        while len(self._pins) > MAX_EDGES:
            oldest = next(iter(self._pins))
            self.unpin(oldest.decode())

    def unpin(self, stream: str) -> None:
        """``stream``'s pushes stopped: its pinned versions live their own lifetimes again (fetched once stale)."""
        now = self.clock.seconds()
        for path, lifetime in self._pins.pop(stream.encode(), {}).items():
            self.store.expire(path, lifetime, now)

    def pushes_stopped(self, stream: str) -> None:
        """
        ``stream``'s pushes stopped (its channel went down, or it was
        unsubscribed): its pinned versions are unpinned, and unless another
        channel pushes it, what waits for a push of it (a segment asked for
        a moment before its push, a blocking reload for a pushed version)
        is fetched now rather than once its wait is over, for that push
        will not come. (Its viewers would wait up to ``push_wait`` on a
        segment the player needs now: a stall, when an origin dies.)
        """
        self.unpin(stream)
        if self.pushing is not None and self.pushing(stream):
            return
        prefix = b"/live/%s/" % (stream.encode(),)
        for key, fetch in list(self.fetches.items()):
            if key.startswith(prefix):
                fetch.stop_waiting()

    def _left(self, viewer: Viewer) -> None:
        """A viewer is gone; if it was the last one reading an unfinished fetch, cancel it."""
        fetch = viewer.fetch
        if fetch is not None and viewer in fetch.viewers:
            fetch.viewers.remove(viewer)
            if not fetch.done and not fetch.pushed and not any(reader.reading for reader in fetch.viewers):
                fetch.cancel()

    def _fetch_done(self, fetch: Fetch) -> None:
        if self.fetches.get(fetch.key) is fetch:
            del self.fetches[fetch.key]
            self._unblock(fetch.key)
