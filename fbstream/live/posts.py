"""
Viewers' comments and reactions on their way to the stream's encoder.

- At the PoP, the viewers' site takes ``POST /api/v1/live_videos/<id>/comments``
  (``{"text": ..., "name": ...}``) and ``.../reactions`` (``{"reaction":
  "like"}``) with or without the live API: each client address may post so
  many a second (429 with ``Retry-After`` past that), a post must be small
  (413) and well formed (400). What passes is answered ``202`` and joins its
  stream's batch (:class:`Batches`), which goes on once a second at most,
  as ``POST /live/<id>/posts``, to an origin: a flood of posts costs the
  data center about one request per second per stream per PoP process,
  however many viewers post.
- The origin passes a batch on to the stream's encoder (the registry's
  owner), which keeps it in the stream's timed track
  (:mod:`fbstream.live.comments`): the comments and reaction counts of the
  second it arrived in, published as ``/live/<id>/comments/<n>.json``.

A post is delivered at most once: a batch the data center cannot take is
logged and counted (``fbstream_viewer_posts{outcome="lost upstream"}``),
not sent again. The per-viewer limits are kept where the viewer's address
is known: in each process serving viewers (a PoP's workers included),
bounded in addresses, as the batches are in streams.
"""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.client import readBody
from twisted.web.resource import Resource, getChildForRequest
from twisted.web.server import NOT_DONE_YET, Request

from fbstream.live.comments import (
    MAX_BATCH_BODY,
    MAX_BODY,
    MAX_PER_SECOND,
    PostError,
    Second,
    parse_comment,
    parse_reaction,
)
from fbstream.live.urls import STREAM_ID_PATTERN
from fbstream.ratelimit import KeyedBuckets

#: The path a batch travels upstream on. Group 1: the stream.
UPSTREAM_PATH = re.compile(rb"^/live/(%s)/posts$" % (STREAM_ID_PATTERN.encode(),))
#: Streams with posts waiting at one process, at most.
MAX_PENDING_STREAMS = 1000
#: Seconds since its last request a connection still counts as a viewer
#: (a player asks every second, and reloads the manifest every two).
AUDIENCE_WINDOW = 4.0
#: The viewers' path, under /api/. Groups: the stream, the kind.
VIEWER_PATH = re.compile(rb"^/api/v1/live_videos/(%s)/(comments|reactions)$" % (STREAM_ID_PATTERN.encode(),))
#: Per client address: comments (one every 2 s, 3 at once) and reactions (5 a second, 10 at once).
LIMITS = {b"comments": (0.5, 3.0), b"reactions": (5.0, 10.0)}
#: An upstream answer longer than this is not passed on.
MAX_ANSWER = 4096

POSTS = Counter("fbstream_viewer_posts", "viewers' comments and reactions, by kind and outcome", ["kind", "outcome"])

#: (path, body) -> the upstream's response.
Poster = Callable[[bytes, bytes], "Deferred[Any]"]


def _answer(request: Request, code: int, body: Any) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"access-control-allow-origin", b"*")
    return json.dumps(body).encode() + b"\n"


def _read(request: Request, most: int) -> bytes | None:
    """The request's body, or None if it is over ``most`` bytes."""
    raw = request.content.read(most + 1) if request.content is not None else b""
    return None if len(raw) > most else raw


def _read_answer(response: Any) -> Deferred[tuple[int, bytes]]:
    """An upstream response's status and body."""
    d: Deferred[bytes] = readBody(response)
    return d.addCallback(lambda raw: (response.code, raw))


def forward(request: Request, poster: Poster, path: bytes, body: bytes) -> int:
    """Pass ``body`` on to ``path`` upstream and its answer back (502 if there is none)."""
    log = Logger()

    def relay(result: tuple[int, bytes]) -> None:
        code, raw = result
        if request.finished or request.channel is None:
            return
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"access-control-allow-origin", b"*")
        request.write(raw[:MAX_ANSWER])
        request.finish()

    def failed(failure: Any) -> None:
        log.warn("posts to {path} could not be passed on: {why}", path=path.decode(), why=failure.getErrorMessage())
        if not request.finished and request.channel is not None:
            request.write(_answer(request, 502, {"error": "the stream's data center cannot be reached"}))
            request.finish()

    d = poster(path, body)
    d.addCallback(_read_answer)
    d.addCallbacks(relay, failed)
    return NOT_DONE_YET


class Batches:
    """
    Each stream's posts at one process, passed on together: the first post
    after a quiet second goes at once, the ones that follow within the
    second after it wait for it to end.
    """

    log = Logger()

    def __init__(self, reactor: Any, poster: Poster, interval: float = 1.0,
                 max_streams: int = MAX_PENDING_STREAMS) -> None:
        self.reactor = reactor
        self.poster = poster
        self.interval = interval
        self.max_streams = max_streams
        self.pending: dict[bytes, Second] = {}
        #: When each stream's last batch went (those of the last interval only).
        self.sent: dict[bytes, float] = {}

    def add(self, stream: bytes, comment: dict[str, Any] | None = None, reaction: str | None = None,
            viewers: tuple[str, int] | None = None) -> bool:
        """Join ``stream``'s batch (a post, or this process's viewers of it); False if too many streams wait."""
        pending = self.pending.get(stream)
        if pending is None:
            if len(self.pending) >= self.max_streams:
                return False
            now = self.reactor.seconds()
            pending = self.pending[stream] = Second()
            wait = max(0.0, self.sent.get(stream, -math.inf) + self.interval - now)
            self.reactor.callLater(wait, self._send, stream)
        if comment is not None:
            if len(pending.comments) < MAX_PER_SECOND:
                pending.comments.append(comment)
            else:
                pending.dropped += 1
        if reaction is not None:
            pending.reactions[reaction] = pending.reactions.get(reaction, 0) + 1
        if viewers is not None:
            pending.audience[viewers[0]] = viewers[1]
        return True

    def _send(self, stream: bytes) -> None:
        pending = self.pending.pop(stream)
        now = self.reactor.seconds()
        self.sent[stream] = now
        if len(self.sent) > 2 * self.max_streams:
            self.sent = {s: t for s, t in self.sent.items() if t > now - self.interval}
        if pending.dropped:
            POSTS.labels(kind="comments", outcome="dropped").inc(pending.dropped)
        batch: dict[str, Any] = {"comments": pending.comments, "reactions": pending.reactions}
        if pending.audience:
            batch["viewers"] = pending.audience
        body = json.dumps(batch).encode()
        n = len(pending.comments) + sum(pending.reactions.values())

        def done(result: tuple[int, bytes]) -> None:
            code, raw = result
            if not n:
                return  # a count of viewers only
            if code == 202:
                POSTS.labels(kind="all", outcome="delivered").inc(n)
            else:
                POSTS.labels(kind="all", outcome="refused upstream").inc(n)
                self.log.info("{n} posts to {stream} refused upstream: {code} {why}", n=n, stream=stream.decode(),
                              code=code, why=raw[:200].decode("utf-8", "replace").strip())

        def lost(failure: Any) -> None:
            if not n:
                return
            POSTS.labels(kind="all", outcome="lost upstream").inc(n)
            self.log.warn("{n} posts to {stream} could not be passed on: {why}", n=n, stream=stream.decode(),
                          why=failure.getErrorMessage())

        d = self.poster(b"/live/%s/posts" % (stream,), body)
        d.addCallback(_read_answer)
        d.addCallbacks(done, lost)


class Audience:
    """
    This process's viewers of each stream: the connections that asked for
    its manifests or media in the last :data:`AUDIENCE_WINDOW` seconds,
    reported with the stream's batch once a second (so the broadcaster, and
    every viewer, reads the audience in the comments track). Bounded: the
    streams (past the bound, the first seen go uncounted for a moment), the
    viewers of each by the connections the PoP takes; half the streams a
    process batches for at once, so posts keep room beside the counts.
    """

    def __init__(self, reactor: Any, batches: Batches, reporter: str,
                 max_streams: int = MAX_PENDING_STREAMS // 2) -> None:
        self.clock = reactor
        self.batches = batches
        self.reporter = reporter
        self.max_streams = max_streams
        self.streams: OrderedDict[bytes, dict[Any, float]] = OrderedDict()

    def saw(self, stream: bytes, viewer: Any) -> None:
        """A request of ``viewer`` (its connection) for ``stream``'s media: on each request, so cheap."""
        seen = self.streams.get(stream)
        if seen is None:
            seen = self.streams[stream] = {}
            if len(self.streams) > self.max_streams:
                self.streams.popitem(last=False)
        seen[viewer] = self.clock.seconds()

    def report(self) -> None:
        now = self.clock.seconds()
        for stream in list(self.streams):
            seen = self.streams[stream]
            for viewer in [v for v, at in seen.items() if at < now - AUDIENCE_WINDOW]:
                del seen[viewer]
            if not seen:
                del self.streams[stream]
            else:
                self.batches.add(stream, viewers=(self.reporter, len(seen)))


class ViewerPosts(Resource):
    """At the PoP: a viewer's post, checked and limited here, and batched for its stream's encoder."""

    isLeaf = True

    def __init__(self, reactor: Any, poster: Poster) -> None:
        super().__init__()
        self.reactor = reactor
        self.batches = Batches(reactor, poster)
        self.limits = {kind: KeyedBuckets(rate, burst) for kind, (rate, burst) in LIMITS.items()}

    def render_POST(self, request: Request) -> bytes | int:
        match = VIEWER_PATH.match(request.path)
        if match is None:
            return _answer(request, 404, {"error": "no such resource"})
        stream, kind = match.groups()
        label = kind.decode()
        now = self.reactor.seconds()
        address = str(getattr(request.getClientAddress(), "host", "") or "")
        wait = self.limits[kind].take(address, now)
        if wait > 0:
            POSTS.labels(kind=label, outcome="too many").inc()
            request.setHeader(b"retry-after", b"%d" % (math.ceil(wait),))
            return _answer(request, 429, {"error": "too many %s from this viewer: wait %.1f s" % (label, wait)})
        raw = _read(request, MAX_BODY)
        try:
            if raw is None:
                raise PostError(413, "a post is at most %d bytes" % (MAX_BODY,))
            if kind == b"comments":
                name, text = parse_comment(raw)
                taken = self.batches.add(stream, comment={"name": name, "text": text, "at": round(now, 3)})
            else:
                taken = self.batches.add(stream, reaction=parse_reaction(raw))
        except PostError as e:
            POSTS.labels(kind=label, outcome="refused").inc()
            return _answer(request, e.code, {"error": str(e)})
        if not taken:
            POSTS.labels(kind=label, outcome="busy").inc()
            return _answer(request, 503, {"error": "too many streams' posts waiting here: try again"})
        POSTS.labels(kind=label, outcome="accepted").inc()
        return _answer(request, 202, {"accepted": True})

    def render_OPTIONS(self, request: Request) -> bytes:
        # A page on another origin posting JSON asks first.
        request.setHeader(b"access-control-allow-methods", b"POST")
        request.setHeader(b"access-control-allow-headers", b"content-type")
        request.setHeader(b"access-control-max-age", b"600")
        return _answer(request, 204, {})


class UpstreamPosts(Resource):
    """At the origin: a PoP's batch passed on to the stream's encoder."""

    isLeaf = True

    def __init__(self, poster: Poster) -> None:
        super().__init__()
        self.poster = poster

    def render_POST(self, request: Request) -> bytes | int:
        match = UPSTREAM_PATH.match(request.path)
        if match is None:
            return _answer(request, 404, {"error": "no such resource"})
        raw = _read(request, MAX_BATCH_BODY)
        if raw is None:
            return _answer(request, 413, {"error": "a batch is at most %d bytes" % (MAX_BATCH_BODY,)})
        return forward(request, self.poster, request.path, raw)


class PostsFirst(Resource):
    """
    ``inner`` (the live API, or the cache), but for POSTs of comments and
    reactions, which go to ``posts``.
    """

    isLeaf = True

    def __init__(self, inner: Resource, posts: Resource) -> None:
        super().__init__()
        self.inner = inner
        self.posts = posts

    def render(self, request: Request) -> Any:
        if request.method in (b"POST", b"OPTIONS") and (VIEWER_PATH.match(request.path)
                                                       or UPSTREAM_PATH.match(request.path)):
            return self.posts.render(request)
        return getChildForRequest(self.inner, request).render(request)
