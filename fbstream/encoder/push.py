"""
What the encoder pushes to the origins subscribed to a stream: the first hop
of the push channel (:mod:`fbstream.push`).

Every object is offered with the status, headers and body a GET of its
playback URL gets from :class:`~fbstream.encoder.web.LiveResource` at that
moment, so a cache that stores a pushed object stores exactly what it would
have fetched:

- each segment from its first chunk, growing as the encoder cuts the rest
  (``X-FBStream-Segment: growing``), and each chunk as its LL-HLS part;
- after every chunk, the new version of that rendition's media playlist
  (saying which blocking reloads it answers, :mod:`fbstream.live.blocking`);
- the DASH manifest and the HLS master playlist once the video is
  published, and again whenever they change (a period begun or ended, the
  end, the first time each new segment number is started);
- each init segment.

A new subscriber is sent at once the newest version of every manifest and
playlist, the init segments, and the segments still growing.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from fbstream.encoder.store import Change, LiveVideo, Rendition, Segment
from fbstream.encoder.web import (
    GROWING,
    IMMUTABLE,
    STARTING,
    TEXT_TYPE,
    LiveResource,
    VideoRegistry,
    media_type,
    typed,
)
from fbstream.push.channel import Offer, PushHub, whole

OK = 200
NOT_FOUND = 404


class EncoderPushSource:
    """The encoder's videos, offered to a :class:`~fbstream.push.channel.PushHub` as they change."""

    def __init__(self, hub: PushHub, videos: VideoRegistry, resource: LiveResource, clock: IReactorTime,
                 wall: IReactorTime | None = None) -> None:
        self.hub = hub
        self.videos = videos
        self.resource = resource
        self.clock = clock
        #: Unix time for the offers' "made" stamps (the reactor's clock is it,
        #: in production; tests pass a Clock).
        self.wall = wall or clock
        #: The watcher of each wanted video, to unwatch it.
        self._watching: dict[str, tuple[LiveVideo, object]] = {}
        #: The last manifest bodies offered, to offer them again only when they change.
        self._last: dict[bytes, bytes] = {}
        #: Stream -> the segment number the manifests were last offered at.
        self._refreshed: dict[str, int] = {}
        hub.source = self
        videos.on_put.append(self._put)

    # IPushSource -------------------------------------------------------------

    def wanted(self, stream: str) -> None:
        video = self.videos.get(stream)
        if video is not None:
            self._watch(video)

    def unwanted(self, stream: str) -> None:
        watching = self._watching.pop(stream, None)
        if watching is not None:
            video, watcher = watching
            video.unwatch(watcher)  # type: ignore[arg-type]
        prefix = b"/live/%s/" % (stream.encode(),)
        for path in [p for p in self._last if p.startswith(prefix)]:
            del self._last[path]
        self._refreshed.pop(stream, None)

    def current(self, stream: str) -> list[Offer]:
        video = self.videos.get(stream)
        if video is None:
            return []
        offers = self._manifests(video, always=True)
        for rendition in video.renditions.values():
            for period, data in sorted(rendition.inits.items()):
                offers.append(self._init(video, rendition, period, data))
        for rendition in video.renditions.values():
            offers.append(self._playlist(video, rendition))
            for seg in rendition.segments.values():
                if not seg.complete and not seg.failed and seg.chunks:
                    offers.append(self._segment(video, rendition, seg))
        return offers

    # The video's changes ---------------------------------------------------------

    def _put(self, video: LiveVideo) -> None:
        if self.hub.wants(video.stream):
            # A new broadcast under the same id: what the caches hold of the
            # old one is replaced at once (a manifest not published yet is
            # the 404 a GET gets).
            self.unwanted(video.stream)
            self._watch(video)
            for offer in self.current(video.stream):
                self.hub.offer(offer)

    def _watch(self, video: LiveVideo) -> None:
        if video.stream in self._watching:
            return

        def changed(change: Change, name: str | None, number: int) -> None:
            self._changed(video, change, name, number)

        self._watching[video.stream] = (video, changed)
        video.watch(changed)

    def _changed(self, video: LiveVideo, change: Change, name: str | None, number: int) -> None:
        if not self.hub.wants(video.stream):
            return
        rendition = video.renditions.get(name) if name is not None else None
        if change is Change.INIT and rendition is not None:
            data = rendition.inits.get(number)
            if data is not None:
                self.hub.offer(self._init(video, rendition, number, data))
            return
        if change is Change.CHUNK and rendition is not None:
            seg = rendition.segments.get(number)
            if seg is None:
                return
            index = len(seg.chunks) - 1
            if index == 0:
                self.hub.offer(self._segment(video, rendition, seg))
                # Once a second, with the first rendition to start a
                # segment, the manifests whether or not they changed: the
                # caches keep a pushed version fresh only that long.
                refresh = seg.number > self._refreshed.get(video.stream, 0)
                if refresh:
                    self._refreshed[video.stream] = seg.number
                for offer in self._manifests(video, always=refresh):
                    self.hub.offer(offer)
            self.hub.offer(self._part(video, rendition, seg, index))
            self.hub.offer(self._playlist(video, rendition))
            return
        if change is Change.SEGMENT and rendition is not None:
            self.hub.offer(self._playlist(video, rendition))
            for offer in self._manifests(video):
                self.hub.offer(offer)
            return
        # A period, or the end: everything a viewer reads of it changes.
        for offer in self._manifests(video):
            self.hub.offer(offer)
        for each in video.renditions.values():
            self.hub.offer(self._playlist(video, each))

    # Offers, each as a GET of its URL would answer now ----------------------------

    def _path(self, video: LiveVideo, *parts: str) -> bytes:
        return ("/live/%s/%s" % (video.stream, "/".join(parts))).encode()

    def _made(self) -> float:
        return self.wall.seconds()

    def _init(self, video: LiveVideo, rendition: Rendition, period: int, data: bytes) -> Offer:
        name = "init.mp4" if period == 0 else "init-%d.mp4" % (period,)
        return whole(video.stream, self._path(video, rendition.info.name, name), OK,
                     typed(media_type(rendition), IMMUTABLE), data, latest_wins=False, made=self._made())

    def _segment(self, video: LiveVideo, rendition: Rendition, seg: Segment) -> Offer:
        headers = [(n, v) for n, v in typed(media_type(rendition), b"") if n != b"cache-control"] + GROWING
        offer = Offer(video.stream, self._path(video, rendition.info.name, "%d.m4s" % (seg.number,)), OK,
                      headers, seg, latest_wins=False, made=self._made())

        def changed(s: Segment) -> None:
            if s.failed:
                offer.fail()
            else:
                offer.grew()

        seg.listen(changed)
        return offer

    def _part(self, video: LiveVideo, rendition: Rendition, seg: Segment, index: int) -> Offer:
        return whole(video.stream, self._path(video, rendition.info.name, "%d.%d.m4s" % (seg.number, index)), OK,
                     typed(media_type(rendition), IMMUTABLE), seg.chunks[index], latest_wins=False,
                     made=self._made())

    def _playlist(self, video: LiveVideo, rendition: Rendition) -> Offer:
        headers, body = self.resource.playlist(video, rendition)
        return whole(video.stream, self._path(video, rendition.info.name, "playlist.m3u8"), OK, headers, body,
                     latest_wins=True, made=self._made())

    def _manifests(self, video: LiveVideo, always: bool = False) -> list[Offer]:
        """The DASH manifest and HLS master playlist, if they changed: the 404 a GET gets until they are out."""
        offers = []
        for kind, name in (("dash", "manifest.mpd"), ("hls", "master.m3u8")):
            if self.resource.published(video):
                code = OK
                headers, body = self.resource.manifest(video, kind)
            else:
                code, headers, body = NOT_FOUND, typed(TEXT_TYPE, b"public, max-age=1"), STARTING.encode() + b"\n"
            path = self._path(video, name)
            if always or self._last.get(path) != body:
                self._last[path] = body
                offers.append(whole(video.stream, path, code, headers, body, latest_wins=True, made=self._made()))
        return offers
