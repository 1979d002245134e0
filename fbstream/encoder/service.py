"""
The encoder role's parts: the consumer factory that starts a transcoder for
every published stream, the registry of videos, the archive (loaded at startup
and expired by retention), and the playback resources.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from zope.interface import implementer

from fbstream.config import ConfigError, RoleConfig, named_urls
from fbstream.diskio import ThreadPoolService
from fbstream.encoder import manifest
from fbstream.encoder import metrics as em
from fbstream.encoder.chat import Chat
from fbstream.encoder.ladder import VideoRendition, parse_rungs
from fbstream.encoder.ownership import Broadcasts
from fbstream.encoder.push import EncoderPushSource
from fbstream.encoder.store import Archive, LiveVideo, Period, Rendition
from fbstream.encoder.transcode import RenditionInfo, Transcoder, TranscoderSettings
from fbstream.encoder.web import LiveEdge, LiveResource, VideoRegistry
from fbstream.encoder.worker import StreamEncoder
from fbstream.endings import Ending, EndKind
from fbstream.live.clock import TimeResource
from fbstream.live.hub import LiveStream
from fbstream.media import IConsumerFactory
from fbstream.push.channel import PushHub
from fbstream.reactors import IReactorTimeFromThreads


@implementer(IConsumerFactory)
class EncoderConsumers:
    """Starts the transcoder of every stream published to this encoder."""

    log = Logger()

    def __init__(
        self,
        registry: VideoRegistry,
        settings: TranscoderSettings,
        transcode_pool: Any,
        reactor: IReactorTimeFromThreads,
        archive: Archive | None,
        window_seconds: float,
        max_lag_ms: int,
        broadcasts: Callable[[Callable[[str], Deferred[None]]], Broadcasts] | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.transcode_pool = transcode_pool
        self.reactor = reactor
        self.archive = archive
        self.window_seconds = window_seconds
        self.max_lag_ms = max_lag_ms
        #: The encoder of each stream, by id (the latest broadcast of each).
        self.encoders: dict[str, StreamEncoder] = {}
        #: Ownership and reconnects (None: every publish is a new video),
        #: made from what it waits on: a stream's last publish transcoded.
        self.broadcasts: Broadcasts | None = broadcasts(self.idle) if broadcasts is not None else None

    def consumer_for(self, stream: LiveStream) -> StreamEncoder:
        name = stream.name
        publisher = stream.publisher

        def make(availability_start: float) -> LiveVideo:
            video = LiveVideo(name, availability_start, self.window_seconds,
                              self.archive.path(name) if self.archive else None, self.reactor)
            if self.archive is not None:
                self.archive.start(name)
            self.registry.put(video)
            return video

        period = None
        known: list[dict[str, Any]] = []
        if self.broadcasts is not None:
            video, period, known = self.broadcasts.video_for(name, make)
        else:
            video = make(self.reactor.seconds())
        self.registry.put(video)
        em.LIVE_VIDEOS.inc()

        def refused(reason: str) -> None:
            em.REFUSED.inc()
            stream.publisher.stop(reason)

        broadcasts = self.broadcasts
        transcoder = Transcoder(self.settings)
        if period is not None:
            # The broadcaster is back now: the slate fills the time it was away.
            resume_ms = int((self.reactor.seconds() - video.availability_start) * 1000)
            transcoder = Transcoder(self.settings, clock=period.clock,
                                    renditions=_video_renditions(video, known) or None, resume_ms=resume_ms)
        encoder = StreamEncoder(
            video,
            transcoder,
            self.transcode_pool,
            self.reactor,
            self.archive,
            self.max_lag_ms,
            refused,
            on_finished=(lambda reason: broadcasts.publish_ended(name, reason, publisher))
            if broadcasts is not None else None,
            on_progress=(lambda: broadcasts.progress(name)) if broadcasts is not None else None,
        )
        self.encoders[name] = encoder
        if broadcasts is not None:
            broadcasts.attach(name, video)
        return encoder

    def idle(self, name: str) -> Deferred[None]:
        """Fires once the last publish of ``name`` is fully transcoded."""
        encoder = self.encoders.get(name)
        if encoder is None or encoder.done.called:
            return succeed(None)
        d: Deferred[None] = Deferred()

        def fire(result: Any) -> Any:
            d.callback(None)
            return result

        encoder.done.addBoth(fire)
        return d


def _video_renditions(video: LiveVideo, known: list[dict[str, Any]]) -> list[VideoRendition]:
    """
    The video renditions a live video already has (kept across periods), or
    those ``known`` from the registry when another encoder began it.
    """
    infos = [r.info for r in video.renditions.values()]
    if not infos and known:
        infos = [RenditionInfo(**k) for k in known]
    specs = [VideoRendition(i.name, i.width, i.height, i.bandwidth) for i in infos if i.kind == "video"]
    return sorted(specs, key=lambda v: -v.height)


def load_archive(archive: Archive, registry: VideoRegistry, window_seconds: float,
                 clock: IReactorTime) -> list[LiveVideo]:
    """
    Put every archived video back in the registry (at startup). One that had
    ended is its replay. One this encoder's restart interrupted is not ended:
    its broadcaster may still come back, so it stays a live video, interrupted
    (a dynamic manifest that caches hold for a second, not a replay they would
    keep for a minute). Returns those.
    """
    interrupted = []
    for state in archive.load_all():
        video = LiveVideo(state.stream, state.availability_start, window_seconds, archive.path(state.stream), clock)
        for info in state.renditions:
            rendition = Rendition(RenditionInfo(**info), None)  # init read from the archive
            history = state.segments.get(info["name"], {})
            rendition.history = {int(n): (v[0], v[1]) for n, v in sorted(history.items(), key=lambda kv: int(kv[0]))}
            rendition.newest = max(rendition.history, default=0)
            video.renditions[info["name"]] = rendition
        if state.periods:
            video.periods = [Period(**p) for p in state.periods]
        registry.put(video)
        if state.ended:
            video.ended = True
            video.ending = Ending(EndKind.ARCHIVED, "archived")
        else:
            video.close_period()  # where its content ends; interrupted from now
            video.complete_through = min((max(r.history, default=0) for r in video.renditions.values()),
                                         default=0)
            interrupted.append(video)
    return interrupted


def end_unless_resumed(archive: Archive, registry: VideoRegistry, video: LiveVideo) -> None:
    """The grace period of a video a restart interrupted is over: if no one continued it, it ends."""
    if registry.videos.get(video.stream) is video and video.interrupted and not video.ended:
        video.end(Ending(EndKind.ABANDONED, "the broadcaster did not come back after the encoder restarted"))
        archive.write(video.stream, ("state.json",), video.state().to_json().encode())


def settings_from(config: RoleConfig) -> TranscoderSettings:
    return TranscoderSettings(
        rungs=parse_rungs(config["encoder.ladder"]),
        audio_bitrate=config["encoder.audio_bitrate"],
        preset=config["encoder.preset"],
        chunk_ms=config["encoder.chunk_ms"],
    )


def steering(config: RoleConfig) -> manifest.Steering | None:
    """The MPD's Content Steering, from ``steering.server`` and ``steering.pops``; None without a server."""
    if not config["steering.server"]:
        return None
    if not config["steering.server"].startswith(("http://", "https://")):
        raise ConfigError("steering.server must be an http(s) URL")
    pops = named_urls("steering.pops", config["steering.pops"])
    if not pops:
        raise ConfigError("steering.server needs steering.pops: the PoPs it steers between")
    return manifest.Steering(config["steering.server"], tuple(pops.items()))


def build_encoder(parent: MultiService, config: RoleConfig, reactor: IReactorTimeFromThreads, root: Resource,
                  broadcasts: Callable[[Callable[[str], Deferred[None]]], Broadcasts] | None = None,
                  push: PushHub | None = None) -> EncoderConsumers:
    """
    Add the encoder's pools, archive and resources; return its consumer
    factory, with the ownership of its broadcasts made by ``broadcasts``.
    """
    transcode = ThreadPoolService("fbstream-transcode", 1, config["encoder.max_streams"], reactor)
    transcode.setServiceParent(parent)
    archive = None
    if config["archive.dir"]:
        # One thread: archive writes of a stream happen in the order they were made.
        disk = ThreadPoolService("fbstream-archive", 1, 1, reactor)
        disk.setServiceParent(parent)
        archive = Archive(config["archive.dir"], disk.pool, reactor)
    registry = VideoRegistry()
    window = config["encoder.window_seconds"]
    if archive is not None:
        for video in load_archive(archive, registry, window, reactor):
            reactor.callLater(config["ingest.grace_seconds"], end_unless_resumed, archive, registry, video)
        retention = config["archive.retention_hours"] * 3600

        def expire() -> None:
            d = archive.expire(retention, reactor.seconds())
            d.addCallback(lambda gone: [registry.videos.pop(name, None) for name in gone])

        timer = TimerService(3600, expire)
        timer.clock = reactor
        timer.setServiceParent(parent)
    consumers = EncoderConsumers(
        registry,
        settings_from(config),
        transcode.pool,
        reactor,
        archive,
        window,
        config["encoder.max_lag_ms"],
        broadcasts,
    )
    hold = config["encoder.hold_segments"]
    # Held long enough for the furthest segment allowed to start on time,
    # and for an encoder as far behind as its backlog bound lets it fall.
    edge = LiveEdge(hold, config["encoder.max_held"], hold + 1 + config["encoder.max_lag_ms"] / 1000)
    chat = Chat(registry, archive, reactor)
    chat.setServiceParent(parent)
    resource = LiveResource(
        registry, archive, reactor, config["encoder.chunk_ms"],
        target_latency=config["encoder.target_latency"], edge=edge,
        part_hold_back=config["encoder.part_hold_back"], stall_timeout=config["encoder.stall_timeout"],
        steering=steering(config), chat=chat,
    )
    root.putChild(b"live", resource)
    if push is not None:
        EncoderPushSource(push, registry, resource, reactor)
    root.putChild(b"time", TimeResource(reactor))
    return consumers
