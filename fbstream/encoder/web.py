"""
The playback URLs of DESIGN.md (:mod:`fbstream.live.urls`), served by the
encoder to the origin, and ``/time`` (UTC, ISO 8601, for DASH ``UTCTiming``).

Cache headers drive the caches in front: a complete segment is immutable; the
segment being made is streamed chunk by chunk as the encoder cuts them, with
``Cache-Control: no-store`` and ``X-FBStream-Segment: growing`` so no cache
keeps it as complete before it is (if the stream dies mid-segment the
response is aborted, never finished); manifests live one second; a live
segment that does not exist yet is a 404 no cache keeps (:data:`NOT_YET`).
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from fbstream.encoder import manifest
from fbstream.encoder.store import Archive, LiveVideo, Segment
from fbstream.live.urls import INIT, RENDITION, SEGMENT, STREAM_ID

IMMUTABLE = b"public, max-age=31536000, immutable"
#: A live segment that does not exist yet may exist a moment later (an
#: encoder running late, a broadcaster reconnecting): no cache keeps that
#: 404, or a player's retry would meet it again after the segment is made.
#: Concurrent requests for it are still coalesced by every cache.
NOT_YET = b"no-store"
#: How long a request for the next segment waits for it to start.
NEXT_SEGMENT_WAIT = 1.5


class VideoRegistry:
    """The live and archived videos one encoder serves, by stream id."""

    def __init__(self) -> None:
        self.videos: dict[str, LiveVideo] = {}

    def get(self, stream: str) -> LiveVideo | None:
        return self.videos.get(stream)


def _headers(request: Request, content_type: bytes, cache: bytes) -> None:
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"cache-control", cache)
    request.setHeader(b"access-control-allow-origin", b"*")


def _error(request: Request, code: int, message: str, cache: bytes = b"public, max-age=1") -> bytes:
    request.setResponseCode(code)
    _headers(request, b"text/plain; charset=utf-8", cache)
    return message.encode() + b"\n"


class TimeResource(Resource):
    isLeaf = True

    def __init__(self, clock: Any) -> None:
        super().__init__()
        self.clock = clock

    def render_GET(self, request: Request) -> bytes:
        _headers(request, b"text/plain; charset=utf-8", b"no-store")
        return manifest.iso_time(self.clock.seconds()).encode()


class LiveResource(Resource):
    """Everything under ``/live/``."""

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        registry: VideoRegistry,
        archive: Archive | None,
        clock: Any,
        chunk_ms: int,
        suggested_delay: float = 3.0,
    ) -> None:
        super().__init__()
        self.registry = registry
        self.archive = archive
        self.clock = clock
        self.chunk_ms = chunk_ms
        self.suggested_delay = suggested_delay
        #: A live manifest is published once this many segments are complete
        #: everywhere: a player joining earlier would compute a segment number
        #: before the first one (ffmpeg's DASH demuxer then asks for garbage).
        self.min_segments = int(math.ceil(suggested_delay)) + 1

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
        if len(parts) != 3 or not RENDITION.match(parts[1]):
            return _error(request, 404, "no such playback URL")
        rendition = video.renditions.get(parts[1].decode())
        if rendition is None:
            return _error(request, 404, "no such rendition")
        kind = b"video/mp4" if rendition.info.kind == "video" else b"audio/mp4"
        if parts[2] == b"playlist.m3u8":
            _headers(request, b"application/vnd.apple.mpegurl", self._manifest_cache(video))
            return manifest.media_playlist(video, rendition)
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
        number = int(match.group(1))
        seg = rendition.segments.get(number)
        if seg is not None and seg.complete:
            _headers(request, kind, IMMUTABLE)
            return seg.data()
        if seg is not None and not seg.failed:
            return self._stream(request, seg, kind)
        if number in rendition.history or video.ended:
            return self._from_archive(request, video, (rendition.info.name, "%d.m4s" % (number,)), kind)
        if not video.ended and number == video.live_edge() + 1:
            return self._wait_for(request, video, rendition.info.name, number, kind)
        if not video.ended and number > video.live_edge():
            return _error(request, 404, "segment %d is not available yet" % (number,), NOT_YET)
        return _error(request, 404, "segment %d is not available" % (number,))

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
                "started": manifest.iso_time(v.availability_start),
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

    def _manifest(self, request: Request, video: LiveVideo, kind: str) -> bytes:
        if not video.renditions or (not video.ended and video.complete_through < self.min_segments):
            return _error(request, 404, "the stream is starting")
        if kind == "dash":
            _headers(request, b"application/dash+xml", self._manifest_cache(video))
            return manifest.mpd(
                video, self.clock.seconds(), suggested_delay=self.suggested_delay, chunk_ms=self.chunk_ms
            )
        _headers(request, b"application/vnd.apple.mpegurl", self._manifest_cache(video))
        return manifest.master_playlist(video)

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

        def failed(failure: Any) -> None:
            self.log.failure("reading the archive failed", failure)
            if not (request._disconnected or request.finished):
                request.write(_error(request, 500, "archive read failed"))
                request.finish()

        d.addCallbacks(done, failed)
        return NOT_DONE_YET

    def _wait_for(self, request: Request, video: LiveVideo, name: str, number: int, kind: bytes) -> int:
        cancel: list[Callable[[], None]] = []

        def started(seg: Segment | None) -> None:
            if timer.active():
                timer.cancel()
            if request._disconnected or request.finished:
                return
            if seg is None:
                request.write(_error(request, 404, "the broadcast ended"))
                request.finish()
            else:
                self._stream(request, seg, kind)

        def timed_out() -> None:
            cancel[0]()
            if not (request._disconnected or request.finished):
                request.write(_error(request, 404, "segment %d is not available yet" % (number,), NOT_YET))
                request.finish()

        timer = self.clock.callLater(NEXT_SEGMENT_WAIT, timed_out)
        cancel.append(video.when_started(name, number, started))
        request.notifyFinish().addErrback(lambda _: (cancel[0](), timer.active() and timer.cancel()))
        return NOT_DONE_YET

    def _stream(self, request: Request, seg: Segment, kind: bytes) -> int:
        """Send what the segment holds, then each chunk as it is cut."""
        _headers(request, kind, b"no-store")
        request.setHeader(b"x-fbstream-segment", b"growing")
        sent = [0]
        gone = [False]

        def changed(s: Segment) -> None:
            if gone[0]:
                return
            while sent[0] < len(s.chunks):
                request.write(s.chunks[sent[0]])
                sent[0] += 1
            if s.complete:
                gone[0] = True
                request.finish()
            elif s.failed:
                gone[0] = True
                # Never finish a segment that will not complete: abort, so the
                # chunked body ends without its last chunk.
                transport: Any = request.channel.transport
                transport.abortConnection()

        def left(_: Any) -> None:
            gone[0] = True
            seg.unlisten(changed)

        request.notifyFinish().addBoth(left)
        changed(seg)
        if not gone[0]:
            seg.listen(changed)
        return NOT_DONE_YET
