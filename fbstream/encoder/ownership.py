"""
The encoder's side of going live: who may publish a stream, and what becomes
of its live video between publishes.

Before a publish is accepted (:meth:`Broadcasts.admit`) the stream token is
verified, the live API's record is checked (a video the API ended stays
ended), and this encoder claims ownership of the stream in the registry. A
broadcast then outlives its publishes: when the broadcaster drops, the live
video is *interrupted*: its manifest stays live, and a publish with the same
token within ``grace_seconds``, through any PoP and dc-proxy, continues it
as a new period with the next segment numbers. If this encoder died, the
next encoder on the ring claims the stream once the lease lapses (under a
higher fence) and continues the same live video from the state the owner
wrote to the registry. After the grace period the video ends and is a replay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger

from fbstream.encoder.store import LiveVideo, Period
from fbstream.endings import Ending, EndKind
from fbstream.live.ingest import OWNED_ELSEWHERE, PublishRefused
from fbstream.live.tokens import KeyRing, TokenError, token_from_query
from fbstream.reactors import IReactorClients
from fbstream.registry.base import Claim, Owned, Ownership, RegistryUnavailable
from fbstream.registry.records import VideoRecord, VideoState, VideoStatus

ENDED_BY_API = Ending(EndKind.ENDED_BY_API, "the live video was ended")
ABANDONED = Ending(EndKind.ABANDONED, "the broadcaster did not come back")


class Broadcast:
    """One live video on this encoder, across its publishes."""

    #: Set right after the claim (its loss callback needs the broadcast).
    ownership: Ownership

    def __init__(self, stream: str, resumed: VideoState | None) -> None:
        self.stream = stream
        #: The registry state a resumed broadcast continues from.
        self.resumed = resumed
        self.video: LiveVideo | None = None
        self.publisher: Any = None
        self.grace: Any = None
        #: The next try of a state write the registry missed.
        self.retry: Any = None
        self.ended = False
        self._writing = False
        self._dirty = False


class Broadcasts:
    log = Logger()

    def __init__(self, registry: Any, clock: IReactorClients, keys: KeyRing | None, encoder_name: str,
                 advertise_http: str, grace_seconds: float, takeover_silence: float,
                 claim_wait: float, idle: Callable[[str], Deferred[None]] | None = None) -> None:
        self.registry = registry
        self.clock = clock
        self.keys = keys
        self.encoder_name = encoder_name
        self.advertise_http = advertise_http
        self.grace_seconds = grace_seconds
        self.takeover_silence = takeover_silence
        self.claim_wait = claim_wait
        self.by_stream: dict[str, Broadcast] = {}
        #: idle(name) -> Deferred that fires once the stream's last publish is
        #: fully transcoded (the encoder's).
        self.idle: Callable[[str], Deferred[None]] = idle or (lambda name: succeed(None))
        # The live API ends a video by writing its record: seen here at once.
        self._unwatch = registry.watch_videos(self._record_written)

    # IAdmission ---------------------------------------------------------------

    @inlineCallbacks
    def admit(self, name: str, query: str, publisher: Any) -> Any:
        if self.keys is not None:
            try:
                self.keys.verify(token_from_query(query), name, self.clock.seconds())
            except TokenError as e:
                raise PublishRefused("NetStream.Publish.BadName", str(e), "token") from None
        try:
            record = yield self.registry.get_video(name)
        except RegistryUnavailable as e:
            raise PublishRefused("NetStream.Publish.Failed", "the registry is unavailable: %s" % (e,),
                                 "registry") from None
        if record is not None and record.ended:
            raise PublishRefused("NetStream.Publish.BadName", "live video %s has ended" % (name,), "ended")
        current = self.by_stream.get(name)
        if current is not None and not current.ended and not current.ownership.lost:
            if current.publisher is not None:
                silent = current.publisher.silent_for
                if silent < self.takeover_silence:
                    raise PublishRefused(
                        "NetStream.Publish.BadName",
                        "stream %s is being published by another connection" % (name,), "busy")
                self.log.info("{stream}: replacing a publisher silent for {s:.1f} s", stream=name, s=silent)
                old, current.publisher = current.publisher, None
                old.stop("replaced by a new connection of the same broadcaster")
            current.publisher = publisher
            # The last publish's segments are all out before the next begins.
            yield self.idle(name)
            return
        claim = yield self._claim(name)
        try:
            state = yield self.registry.read_state(name)
        except RegistryUnavailable as e:
            self._let_go(claim)
            raise PublishRefused("NetStream.Publish.Failed", "the registry is unavailable: %s" % (e,),
                                 "registry") from None
        except Exception:
            # A state this code cannot read (written by hand, or corrupt):
            # refused, and the claim not held by nobody until its lease lapses.
            self.log.failure("{stream}: the registry's state of it cannot be read", stream=name)
            self._let_go(claim)
            raise PublishRefused("NetStream.Publish.Failed", "the registry's state of the stream cannot be read",
                                 "registry") from None
        if state is not None and state.status is VideoStatus.ENDED:
            self._let_go(claim)
            raise PublishRefused("NetStream.Publish.BadName", "live video %s has ended" % (name,), "ended")
        if current is not None:
            self._forget(current)
        broadcast = Broadcast(name, state)
        broadcast.ownership = Ownership(self.registry, claim, self.clock,
                                        lambda ending: self._lost(broadcast, ending))
        broadcast.publisher = publisher
        self.by_stream[name] = broadcast
        yield self.idle(name)
        self.log.info("{stream}: owned by {me} under fence {fence}{resumed}", stream=name,
                      me=self.encoder_name, fence=claim.owner.fence,
                      resumed=" (continuing from the registry)" if state else "")

    @inlineCallbacks
    def _claim(self, name: str) -> Any:
        deadline = self.clock.seconds() + self.claim_wait
        probed = False
        while True:
            try:
                claim = yield self.registry.claim(name, self.encoder_name, self.advertise_http)
                return claim
            except RegistryUnavailable as e:
                raise PublishRefused("NetStream.Publish.Failed", "the registry is unavailable: %s" % (e,),
                                     "registry") from None
            except Owned as e:
                owner = e.owner
            if not probed and owner.encoder != self.encoder_name:
                probed = True
                alive = yield self._reachable(owner.http)
                if alive:
                    raise PublishRefused(OWNED_ELSEWHERE, "stream %s is owned by encoder %s" % (
                        name, owner.encoder), "owned")
            if self.clock.seconds() >= deadline:
                raise PublishRefused(OWNED_ELSEWHERE, "stream %s is still owned by encoder %s" % (
                    name, owner.encoder), "owned")
            # The owner looks dead: wait for its lease to lapse.
            yield deferLater(self.clock, 0.5, lambda: None)

    @inlineCallbacks
    def _reachable(self, endpoint: str) -> Any:
        try:
            d = connectProtocol(clientFromString(self.clock, endpoint), Protocol())
            proto = yield d.addTimeout(1.0, self.clock)
        except Exception:
            return False
        proto.transport.loseConnection()
        return True

    # The consumer side (EncoderConsumers) ---------------------------------

    def video_for(self, name: str, make: Any) -> tuple[LiveVideo, Period | None, list[dict[str, Any]]]:
        """
        The live video a publish of ``name`` feeds: this broadcast's (a new
        period if it was interrupted), one resumed from the registry, or a new
        one from ``make(availability_start)``. Also returns the period to
        continue from, if any, and the renditions a resumed video had.
        """
        broadcast = self.by_stream.get(name)
        now = self.clock.seconds()
        if broadcast is None:
            return make(now), None, []
        _cancel(broadcast.grace)
        broadcast.grace = None
        if broadcast.video is not None and not broadcast.video.ended:
            return broadcast.video, broadcast.video.open_period(now), []
        state = broadcast.resumed
        if state is not None and state.periods:
            video = make(state.availability_start)
            video.periods = [Period(**p) for p in state.periods]
            last = video.periods[-1]
            if last.end_ms is None:
                # The old owner died mid-period: it ends where its state says.
                last.end_ms = state.last_number * 1000
            broadcast.video = video
            return video, _resume_period(video, state.last_number), state.renditions
        broadcast.video = make(now)
        return broadcast.video, None, []

    def attach(self, name: str, video: LiveVideo) -> None:
        broadcast = self.by_stream.get(name)
        if broadcast is not None:
            broadcast.video = video
            self.write_state(broadcast)

    def progress(self, name: str) -> None:
        broadcast = self.by_stream.get(name)
        if broadcast is not None:
            self.write_state(broadcast)

    def publish_ended(self, name: str, reason: str, publisher: Any) -> None:
        """
        The publisher is gone: wait ``grace_seconds`` for it, then end. An
        ending this encoder decided (the API ended the video, its ownership
        was lost) has ended the broadcast before it stopped the publisher, so
        only a publish that ended by itself waits; ``reason`` is for the log.
        """
        broadcast = self.by_stream.get(name)
        if broadcast is None or broadcast.ended:
            return
        if broadcast.publisher is not None and broadcast.publisher is not publisher:
            return  # already replaced by a new connection
        broadcast.publisher = None
        video = broadcast.video
        if video is None:
            return
        self.log.info("{stream}: interrupted ({reason}); waiting {s} s for the broadcaster",
                      stream=name, reason=reason, s=self.grace_seconds)
        broadcast.grace = self.clock.callLater(self.grace_seconds, self._end, broadcast, ABANDONED)
        self.write_state(broadcast)

    # Registry state ---------------------------------------------------------

    def _state(self, broadcast: Broadcast) -> VideoState:
        video = broadcast.video
        assert video is not None
        last = max((r.newest for r in video.renditions.values()), default=0)
        if broadcast.ended:
            status = VideoStatus.ENDED
        else:
            status = VideoStatus.INTERRUPTED if video.interrupted else VideoStatus.LIVE
        return VideoState(
            status,
            self.encoder_name,
            self.advertise_http,
            broadcast.ownership.fence,
            video.availability_start,
            [attrs.asdict(p) for p in video.periods],
            [attrs.asdict(r.info) for r in video.renditions.values()],
            last,
        )

    def write_state(self, broadcast: Broadcast) -> None:
        """
        Write the broadcast's state to the registry, one write at a time. One
        the registry missed is tried again at the pace of the renewals, for
        as long as this encoder owns the stream: the registry must not go on
        saying live (or interrupted, for a broadcaster coming back to
        continue) about a video that ended here. The stream is released once
        its ended state is written.
        """
        if broadcast.video is None or broadcast.ownership.lost or broadcast.ownership.stopped:
            return  # not this encoder's to write (fenced), or let go
        if broadcast._writing:
            broadcast._dirty = True
            return
        broadcast._writing = True
        broadcast._dirty = False
        d = broadcast.ownership.write(self._state(broadcast))

        def written(record: VideoRecord | None) -> None:
            broadcast._writing = False
            _cancel(broadcast.retry)
            if record is not None and record.ended and not broadcast.ended:
                self._ended_by_api(broadcast)
            elif broadcast._dirty:
                self.write_state(broadcast)
            elif broadcast.ended:
                self._release(broadcast)

        def failed(failure: Any) -> None:
            broadcast._writing = False
            if broadcast.ownership.lost or broadcast.ownership.stopped:
                return  # fenced, or let go: the state is another encoder's to write now
            self.log.warn("{stream}: writing the state failed: {e}; trying again", stream=broadcast.stream,
                          e=failure.getErrorMessage())
            if broadcast.retry is None or not broadcast.retry.active():
                broadcast.retry = self.clock.callLater(self.registry.lease_seconds / 3, self.write_state,
                                                       broadcast)

        d.addCallbacks(written, failed)

    def _let_go(self, claim: Claim) -> None:
        """Release a claim this encoder will not use."""
        self._released(claim.stream, self.registry.release(claim))

    def _release(self, broadcast: Broadcast) -> None:
        self._released(broadcast.stream, broadcast.ownership.release())

    def _released(self, stream: str, d: Deferred[None]) -> None:
        def failed(failure: Any) -> None:
            self.log.warn("{stream}: releasing it failed ({e}); its lease will lapse", stream=stream,
                          e=failure.getErrorMessage())

        d.addErrback(failed)

    # Endings ----------------------------------------------------------------

    def _record_written(self, stream: str, record: VideoRecord) -> None:
        broadcast = self.by_stream.get(stream)
        if broadcast is not None and record.ended and not broadcast.ended:
            self._ended_by_api(broadcast)

    def _ended_by_api(self, broadcast: Broadcast) -> None:
        self.log.info("{stream}: ended by the live API", stream=broadcast.stream)
        self._stop(broadcast, ENDED_BY_API)

    def _stop(self, broadcast: Broadcast, ending: Ending) -> None:
        """End ``broadcast``, then disconnect its publisher (told why), which then waits for nothing."""
        publisher = broadcast.publisher
        self._end(broadcast, ending)
        if publisher is not None:
            publisher.stop(ending.detail)

    def _end(self, broadcast: Broadcast, ending: Ending) -> None:
        if broadcast.ended:
            return
        _cancel(broadcast.grace)
        video = broadcast.video
        if video is not None and not video.ended:
            video.end(ending)
        lost = broadcast.ownership.lost
        broadcast.ended = True
        if not lost and video is not None:
            self.write_state(broadcast)  # then released
        elif not lost:
            self._release(broadcast)
        self.log.info("{stream}: ended ({reason})", stream=broadcast.stream, reason=ending.detail)

    def _lost(self, broadcast: Broadcast, ending: Ending) -> None:
        """Fenced: another encoder owns the stream now. Stop at once."""
        self.log.warn("{stream}: {reason}; stopping", stream=broadcast.stream, reason=ending.detail)
        self._stop(broadcast, ending)

    def _forget(self, broadcast: Broadcast) -> None:
        broadcast.ownership.stop()
        _cancel(broadcast.grace)
        _cancel(broadcast.retry)

    def stop(self) -> None:
        self._unwatch()
        for broadcast in self.by_stream.values():
            self._forget(broadcast)


def _cancel(call: Any) -> None:
    if call is not None and call.active():
        call.cancel()


def _resume_period(video: LiveVideo, last_number: int) -> Period:
    """The first period on this encoder of a video another encoder began."""
    last = video.periods[-1]
    # One number of margin: the dead owner may have cut a segment it had no
    # time to record, and a number once served must never change content.
    first = max(last_number + 2, last.first_number + 1)
    period = Period.after(last, first)
    video.periods.append(period)
    return period
