"""
The playback URLs of DESIGN.md (:mod:`fbstream.live.urls`), served by the
encoder to the origin, and ``/time`` (UTC, ISO 8601, for DASH ``UTCTiming``).

Cache headers drive the caches in front: a complete segment is immutable; the
segment being made is streamed chunk by chunk as the encoder cuts them, at
the pace the client reads (:class:`~fbstream.httpbody.BodyProducer`; one
that stops reading for ``stall_timeout`` is dropped), with
``Cache-Control: no-store`` and ``X-FBStream-Segment: growing`` so no cache
keeps it as complete before it is (if the stream dies mid-segment the
response is aborted, never finished); manifests live one second. A request
for a live segment that has not started is held until it starts, up to a
bound past the live edge (:class:`LiveEdge`); one further ahead is a 404 no
cache keeps (:data:`NOT_YET`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from fbstream.config import default
from fbstream.encoder import manifest
from fbstream.encoder import metrics as em
from fbstream.encoder.chat import Chat
from fbstream.encoder.fmp4 import chunks_of
from fbstream.encoder.store import Archive, LiveVideo, Rendition, Segment
from fbstream.httpbody import BodyProducer, Outcome
from fbstream.live.blocking import BLOCKED_CACHE_CONTROL, HLS_EDGE_HEADER
from fbstream.live.clock import iso_time
from fbstream.live.comments import MAX_BATCH_BODY, PostError, Track, parse_batch
from fbstream.live.posts import UPSTREAM_PATH
from fbstream.live.urls import (
    COMMENTS,
    INIT,
    LIVE_EDGE_HEADER,
    PART,
    RENDITION,
    SEGMENT,
    STREAM_ID,
    playlist_query,
)

IMMUTABLE = b"public, max-age=31536000, immutable"
#: A live segment that does not exist yet may exist a moment later (an
#: encoder running late, a broadcaster reconnecting): no cache keeps that
#: 404, or a player's retry would meet it again after the segment is made.
#: Concurrent requests for it are still coalesced by every cache.
NOT_YET = b"no-store"


@attrs.frozen
class LiveEdge:
    """
    How the encoder answers a request for a segment it has not started yet.

    A player asks for segment *n* as soon as the manifest's timing lets it
    (``availabilityTimeOffset`` before its end, on its own clock, which may
    be a few hundred ms off), and the encoder may be late, by a few hundred
    ms or, on a busy machine, by seconds. A request up to ``hold_segments``
    past the live edge (the newest segment the manifest's timing makes due,
    or the newest started if that is further) is held until the segment
    starts in its rendition, then streamed as it grows: a late encoder is a
    wait, never a 404 (dash.js never skips a segment it was refused). Only
    requests further ahead get the quick ``no-store`` 404.
    """

    hold_segments: int = 2
    #: Requests held at once; more are answered 503 at once.
    max_held: int = 10_000
    #: The longest a request is held: the furthest one allowed starts within
    #: hold_segments + 1 seconds on time, and the encoder may run up to its
    #: backlog bound (encoder.max_lag_ms) late.
    max_wait: float = 6.0


class VideoRegistry:
    """The live and archived videos one encoder serves, by stream id."""

    def __init__(self) -> None:
        self.videos: dict[str, LiveVideo] = {}
        #: Told of every video put in (see :meth:`put`).
        self.on_put: list[Callable[[LiveVideo], None]] = []

    def get(self, stream: str) -> LiveVideo | None:
        return self.videos.get(stream)

    def put(self, video: LiveVideo) -> None:
        """Serve ``video`` under its stream id (a new broadcast, or one loaded from the archive)."""
        known = self.videos.get(video.stream) is video
        self.videos[video.stream] = video
        if not known:
            for callback in list(self.on_put):
                callback(video)


#: The headers of a growing segment beside its type (see the module's docstring).
GROWING = [(b"cache-control", b"no-store"), (b"x-fbstream-segment", b"growing")]
MPD_TYPE = b"application/dash+xml"
TEXT_TYPE = b"text/plain; charset=utf-8"
#: Why a manifest is a 404 before the video is published (see ``LiveResource.min_segments``).
STARTING = "the stream is starting"
M3U8_TYPE = b"application/vnd.apple.mpegurl"
JSON_TYPE = b"application/json"
#: A second's comments asked for up to this long before it is over are held until it is.
COMMENTS_HOLD = 2.0


def typed(content_type: bytes, cache: bytes) -> list[tuple[bytes, bytes]]:
    """The headers every answer of the encoder carries: its type and how long caches keep it."""
    return [(b"content-type", content_type), (b"cache-control", cache), (b"access-control-allow-origin", b"*")]


def media_type(rendition: Rendition) -> bytes:
    return b"video/mp4" if rendition.info.kind == "video" else b"audio/mp4"


def _headers(request: Request, content_type: bytes, cache: bytes) -> None:
    for name, value in typed(content_type, cache):
        request.setHeader(name, value)


def _json(request: Request, code: int, body: Any) -> bytes:
    request.setResponseCode(code)
    _headers(request, JSON_TYPE, b"no-store")
    return json.dumps(body).encode() + b"\n"


def _error(request: Request, code: int, message: str, cache: bytes = b"public, max-age=1") -> bytes:
    request.setResponseCode(code)
    _headers(request, TEXT_TYPE, cache)
    return message.encode() + b"\n"


def _started_through(rendition: Rendition) -> int:
    """The newest segment number ``rendition`` has started (or made)."""
    return max(rendition.segments, default=0)


class LiveResource(Resource):
    """Everything under ``/live/``."""

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        registry: VideoRegistry,
        archive: Archive | None,
        clock: IReactorTime,
        chunk_ms: int,
        target_latency: float = 1.2,
        edge: LiveEdge = LiveEdge(),
        part_hold_back: float = 1.5,
        stall_timeout: float = default("encoder.stall_timeout"),
        steering: manifest.Steering | None = None,
        chat: Chat | None = None,
    ) -> None:
        super().__init__()
        #: DASH Content Steering in live MPDs, if configured.
        self.steering = steering
        self.registry = registry
        self.archive = archive
        self.clock = clock
        self.chunk_ms = chunk_ms
        self.target_latency = target_latency
        self.edge = edge
        self.part_hold_back = part_hold_back
        #: A request for a growing segment that does not read for this long is dropped.
        self.stall_timeout = stall_timeout
        #: The requests for growing segments being streamed now, one producer each.
        self.streaming: set[BodyProducer] = set()
        #: Requests held at the live edge now.
        self.held = 0
        #: A live manifest is published once this many segments are complete
        #: everywhere: a player joining earlier would compute a segment number
        #: before the first one (ffmpeg's DASH demuxer then asks for garbage).
        self.min_segments = 4
        #: Each video's comments and reactions, and their replay (:mod:`fbstream.encoder.chat`).
        self.chat = chat or Chat(registry, archive, clock)

    def render_POST(self, request: Request) -> bytes:
        """A PoP's batch of viewers' comments and reactions (through the origin), into the stream's timed track."""
        match = UPSTREAM_PATH.match(request.path)
        if match is None:
            return _json(request, 404, {"error": "no such resource"})
        stream = match.group(1).decode()
        video = self.registry.get(stream)
        if video is None:
            return _json(request, 404, {"error": "no live video %s here" % (stream,)})
        if video.ended:
            return _json(request, 409, {"error": "the live video has ended"})
        raw = request.content.read(MAX_BATCH_BODY + 1) if request.content is not None else b""
        try:
            comments, reactions, viewers = parse_batch(raw)
        except PostError as e:
            return _json(request, e.code, {"error": str(e)})
        second = self.chat.track(video).batch(self.clock.seconds(), comments, reactions, viewers)
        return _json(request, 202, {"second": second})

    def _comments(self, request: Request, video: LiveVideo, name: bytes) -> bytes | int:
        """Second n's comments and reactions, once it is over; held until then if it is about to be."""
        match = COMMENTS.match(name)
        if match is None:
            return _error(request, 404, "no such playback URL")
        n, now = int(match.group(1)), self.clock.seconds()
        if video.ended and self.chat.archive is not None:
            return self._replayed(request, video, n)
        track = self.chat.kept(video.stream) or Track()
        if track.gone(n) or n < now - track.keep - 1:
            return _error(request, 404, "those comments are no longer kept", b"public, max-age=60")
        if n + 1 > now + COMMENTS_HOLD:
            return _error(request, 404, "that second has not come yet", NOT_YET)
        document = track.document(n, now)
        if document is not None:
            _headers(request, JSON_TYPE, IMMUTABLE)
            return document

        def over() -> None:
            if request.finished or request.channel is None:
                return
            body = (self.chat.kept(video.stream) or Track()).document(n, self.clock.seconds() + 1e-6)
            _headers(request, JSON_TYPE, IMMUTABLE)
            request.write(body or b"")
            request.finish()

        call = self.clock.callLater(max(0.0, n + 1 - now), over)
        request.notifyFinish().addErrback(lambda _: call.cancel() if call.active() else None)
        return NOT_DONE_YET

    def _replayed(self, request: Request, video: LiveVideo, n: int) -> int:
        """Second n's comments and reactions in the replay, from the archive."""

        def answer(document: bytes | None) -> None:
            if request.finished or request.channel is None:
                return
            if document is None:
                body = _error(request, 404, "no such second in this video", b"public, max-age=60")
            else:
                _headers(request, JSON_TYPE, IMMUTABLE)
                body = document
            request.write(body)
            request.finish()

        def failed(failure: Any) -> None:
            self.log.failure("the replay's comments of {stream}", failure, stream=video.stream)
            if not request.finished and request.channel is not None:
                request.write(_error(request, 503, "the replay's comments cannot be read now", NOT_YET))
                request.finish()

        self.chat.replay(video, n).addCallbacks(answer, failed)
        return NOT_DONE_YET

    def render_GET(self, request: Request) -> bytes | int:
        parts = request.postpath
        if parts == [b"index.json"]:
            return self._index(request)
        if not parts or not STREAM_ID.match(parts[0]) or len(parts) > 3:
            return _error(request, 404, "no such playback URL")
        video = self.registry.get(parts[0].decode())
        if video is None:
            return _error(request, 404, "no such stream", b"public, max-age=2")
        if len(parts) == 2:
            if parts[1] == b"manifest.mpd":
                return self._manifest(request, video, "dash")
            if parts[1] == b"master.m3u8":
                return self._manifest(request, video, "hls")
            return _error(request, 404, "no such playback URL")
        if len(parts) == 3 and parts[1] == b"comments":
            return self._comments(request, video, parts[2])
        if len(parts) != 3 or not RENDITION.match(parts[1]):
            return _error(request, 404, "no such playback URL")
        rendition = video.renditions.get(parts[1].decode())
        if rendition is None:
            return _error(request, 404, "no such rendition")
        kind = media_type(rendition)
        if parts[2] == b"playlist.m3u8":
            return self._playlist(request, video, rendition)
        part = PART.match(parts[2])
        if part is not None:
            return self._part(request, video, rendition, int(part.group(1)), int(part.group(2)), kind)
        init = INIT.match(parts[2])
        if init is not None:
            period = int(init.group(1) or 0)
            data = rendition.inits.get(period)
            if data is not None:
                _headers(request, kind, IMMUTABLE)
                return data
            return self._from_archive(request, video, (rendition.info.name, parts[2].decode()), kind)
        match = SEGMENT.match(parts[2])
        if match is None:
            return _error(request, 400, "bad segment name")
        return self._segment(request, video, rendition, int(match.group(1)), kind)

    def _segment(self, request: Request, video: LiveVideo, rendition: Rendition, number: int,
                 kind: bytes) -> bytes | int:
        seg = rendition.segments.get(number)
        if seg is not None and seg.complete:
            _headers(request, kind, IMMUTABLE)
            return seg.data()
        if seg is not None and not seg.failed:
            return self._stream(request, seg, kind)
        if number in rendition.history or video.ended:
            return self._from_archive(request, video, (rendition.info.name, "%d.m4s" % (number,)), kind)
        if number <= _started_through(rendition):
            # Its rendition has gone past it: it was never made (video the
            # encoder dropped while behind) and never will be.
            return _error(request, 404, "segment %d is not available" % (number,))
        if number > self._edge(video) + self.edge.hold_segments:
            request.setHeader(LIVE_EDGE_HEADER, b"%d" % (self._edge(video),))
            return _error(request, 404, "segment %d is not available yet" % (number,), NOT_YET)
        name = rendition.info.name
        return self._hold_for(
            request, lambda callback: video.when_started(name, number, lambda _: callback()),
            lambda: self._segment(request, video, rendition, number, kind),
            lambda: _error(request, 404, "segment %d is not available yet" % (number,), NOT_YET),
        )

    def _index(self, request: Request) -> bytes:
        """The videos this encoder serves, live first, newest first."""
        videos = sorted(
            self.registry.videos.values(),
            key=lambda v: (v.ended, -v.availability_start),
        )
        listing = [
            {
                "id": v.stream,
                "live": not v.ended,
                "started": iso_time(v.availability_start),
                "renditions": sorted(
                    (r.info.name for r in v.renditions.values()), key=lambda n: (n == "audio", n)
                ),
            }
            for v in videos
            if v.renditions
        ]
        _headers(request, b"application/json", b"public, max-age=1")
        return json.dumps({"videos": listing}).encode()

    def _manifest_cache(self, video: LiveVideo) -> bytes:
        return b"public, max-age=60" if video.ended else b"public, max-age=1"

    def published(self, video: LiveVideo) -> bool:
        """Whether ``video``'s manifests are out (see ``min_segments``)."""
        return bool(video.renditions) and (video.ended or video.complete_through >= self.min_segments)

    def manifest(self, video: LiveVideo, kind: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """The headers and body of the DASH manifest (``dash``) or the HLS master playlist, as served now."""
        if kind == "dash":
            body = manifest.mpd(video, self.clock.seconds(), target_latency=self.target_latency,
                                chunk_ms=self.chunk_ms, steering=self.steering)
            return typed(MPD_TYPE, self._manifest_cache(video)), body
        return typed(M3U8_TYPE, self._manifest_cache(video)), manifest.master_playlist(video)

    def playlist(self, video: LiveVideo, rendition: Rendition,
                 cache: bytes | None = None) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """
        The headers and body of a media playlist as served now, reloaded
        without blocking unless ``cache`` says a blocked answer's lifetime.
        Each version says what it satisfies of blocking reloads
        (:mod:`fbstream.live.blocking`), for the caches in front to answer them.
        """
        headers = typed(M3U8_TYPE, cache or self._manifest_cache(video))
        edge = manifest.playlist_edge(video, rendition).header()
        if edge is not None:
            headers.append((HLS_EDGE_HEADER, edge))
        return headers, manifest.media_playlist(video, rendition, self.part_hold_back, self.chunk_ms)

    def _manifest(self, request: Request, video: LiveVideo, kind: str) -> bytes:
        if not self.published(video):
            return _error(request, 404, STARTING)
        headers, body = self.manifest(video, kind)
        for name, value in headers:
            request.setHeader(name, value)
        return body

    def _from_archive(self, request: Request, video: LiveVideo, relative: tuple[str, ...], kind: bytes) -> bytes | int:
        if self.archive is None:
            return _error(request, 404, "not archived")
        d: Deferred[bytes | None] = self.archive.read(video.stream, relative)

        def done(data: bytes | None) -> None:
            if request._disconnected or request.finished:
                return
            if data is None:
                request.write(_error(request, 404, "not in the archive"))
            else:
                _headers(request, kind, IMMUTABLE)
                request.setHeader(b"content-length", b"%d" % (len(data),))
                request.write(data)
            request.finish()

        d.addCallbacks(done, self._archive_failed, errbackArgs=(request,))
        return NOT_DONE_YET

    def _archive_failed(self, failure: Any, request: Request) -> None:
        self.log.failure("reading the archive failed", failure)
        if not (request._disconnected or request.finished):
            request.write(_error(request, 500, "archive read failed"))
            request.finish()

    def _edge(self, video: LiveVideo) -> int:
        """The live edge requests are held up to (see :class:`LiveEdge`)."""
        return max(video.live_edge(), video.due(self.clock.seconds()))

    # LL-HLS ------------------------------------------------------------------

    def _playlist(self, request: Request, video: LiveVideo, rendition: Rendition) -> bytes | int:
        """
        A media playlist; with ``_HLS_msn`` (and ``_HLS_part``) a blocking
        reload, answered once that part (or segment) exists.
        """
        directives = playlist_query(request.args or {})
        if directives is None or video.ended:
            return self._answer_playlist(request, video, rendition)
        msn, part = directives
        if msn > self._edge(video) + self.edge.hold_segments:
            return _error(request, 400, "_HLS_msn %d is too far ahead of the live edge" % (msn,), NOT_YET)
        if video.has_part(rendition.info.name, msn, part):
            return self._blocked_playlist(request, video, rendition)
        return self._hold_for(
            request, lambda callback: video.when_part(rendition.info.name, msn, part, callback),
            lambda: self._blocked_playlist(request, video, rendition),
            lambda: _error(request, 503, "part %d.%s is not available yet" % (msn, part), NOT_YET),
        )

    def _blocked_playlist(self, request: Request, video: LiveVideo, rendition: Rendition) -> bytes:
        return self._answer_playlist(request, video, rendition, BLOCKED_CACHE_CONTROL)

    def _answer_playlist(self, request: Request, video: LiveVideo, rendition: Rendition,
                         cache: bytes | None = None) -> bytes:
        headers, body = self.playlist(video, rendition, cache)
        for name, value in headers:
            request.setHeader(name, value)
        return body

    def _part(self, request: Request, video: LiveVideo, rendition: Rendition, number: int, index: int,
              kind: bytes) -> bytes | int:
        """Part ``index`` of segment ``number``: its chunk, immutable once cut."""
        seg = rendition.segments.get(number)
        if seg is not None and len(seg.chunks) > index:
            _headers(request, kind, IMMUTABLE)
            return seg.chunks[index]
        if (seg is not None and seg.complete) or (seg is None and number in rendition.history):
            if seg is None:
                return self._part_from_archive(request, video, rendition.info.name, number, index, kind)
            return _error(request, 404, "segment %d has no part %d" % (number, index))
        if video.ended or (seg is not None and seg.failed):
            return _error(request, 404, "part %d.%d is not available" % (number, index))
        if number > self._edge(video) + self.edge.hold_segments:
            request.setHeader(LIVE_EDGE_HEADER, b"%d" % (self._edge(video),))
            return _error(request, 404, "part %d.%d is not available yet" % (number, index), NOT_YET)
        name = rendition.info.name
        return self._hold_for(
            request, lambda callback: video.when_part(name, number, index, callback),
            lambda: self._part(request, video, rendition, number, index, kind),
            lambda: _error(request, 404, "part %d.%d is not available yet" % (number, index), NOT_YET),
        )

    def _part_from_archive(self, request: Request, video: LiveVideo, name: str, number: int, index: int,
                           kind: bytes) -> int:
        if self.archive is None:
            return _error(request, 404, "not archived")  # type: ignore[return-value]
        d = self.archive.read(video.stream, (name, "%d.m4s" % (number,)))

        def done(data: bytes | None) -> None:
            if request._disconnected or request.finished:
                return
            chunks = chunks_of(data) if data is not None else []
            if index >= len(chunks):
                request.write(_error(request, 404, "no such part"))
            else:
                _headers(request, kind, IMMUTABLE)
                request.write(chunks[index])
            request.finish()

        d.addCallback(done)
        d.addErrback(self._archive_failed, request)
        return NOT_DONE_YET

    def _hold_for(
        self,
        request: Request,
        wait: Callable[[Callable[[], None]], Callable[[], None]],
        ready: Callable[[], bytes | int],
        too_late: Callable[[], bytes],
    ) -> bytes | int:
        """
        Hold ``request`` (bounded as :class:`LiveEdge` says) until ``wait``
        calls back, then answer it with ``ready()``; past the bound, with
        ``too_late()``.
        """
        if self.held >= self.edge.max_held:
            request.setHeader(b"retry-after", b"1")
            return _error(request, 503, "too many requests waiting for the live edge", NOT_YET)
        self.held += 1
        waiting = [True]

        def release() -> bool:
            if not waiting[0]:
                return False
            waiting[0] = False
            self.held -= 1
            cancel()
            if timer.active():
                timer.cancel()
            return True

        def answer(body: bytes | int) -> None:
            if isinstance(body, bytes) and not request.finished:  # else it is streaming
                request.write(body)
                request.finish()

        def fired() -> None:
            if release() and not (request._disconnected or request.finished):
                answer(ready())

        def timed_out() -> None:
            if release() and not (request._disconnected or request.finished):
                answer(too_late())

        timer = self.clock.callLater(self.edge.max_wait, timed_out)
        cancel = wait(fired)
        request.notifyFinish().addErrback(lambda _: release())
        return NOT_DONE_YET

    def _stream(self, request: Request, seg: Segment, kind: bytes) -> int:
        """Send what the segment holds, then each chunk as it is cut, as fast as the client reads."""
        request.setHeader(b"content-type", kind)
        request.setHeader(b"access-control-allow-origin", b"*")
        for name, value in GROWING:
            request.setHeader(name, value)

        def changed(s: Segment) -> None:
            if s.failed:
                producer.abort()  # never finish a segment that will not complete
            else:
                producer.more()

        def ended(_: BodyProducer, outcome: Outcome) -> None:
            seg.unlisten(changed)
            self.streaming.discard(producer)
            if outcome is Outcome.STALLED:
                em.DROPPED_VIEWERS.inc()

        producer = BodyProducer(request, seg, ended, clock=self.clock, stall_timeout=self.stall_timeout)
        self.streaming.add(producer)
        seg.listen(changed)
        producer.start()
        return NOT_DONE_YET
