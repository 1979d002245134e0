"""
Who may publish a stream and what becomes of its live video between
publishes, on a Clock: an encoder wired as ``roles/build.py`` wires it
(hub, ingest, consumers, :class:`Broadcasts`) over the embedded registry,
its transcoding pool stepped by the test. Only the broadcaster's RTMP
connection is a stand-in, and the transcoder's output is handed to the
stream's worker as its pool would hand it.

Covered: the grace period (interrupted, then ended; or continued by a
return), takeover by another encoder once the owner's lease lapses (never
while the owner answers, and never past ``claim_wait``), a second connection
of the same broadcaster (``takeover_silence``), fencing, the registry away for
less and for more than the lease, and a video the live API ended.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from fbstream.encoder.ladder import parse_rungs
from fbstream.encoder.ownership import Broadcasts
from fbstream.encoder.service import EncoderConsumers
from fbstream.encoder.store import LiveVideo
from fbstream.encoder.transcode import Chunk, InitSegment, RenditionInfo, SegmentEnd, TranscoderSettings
from fbstream.encoder.web import VideoRegistry
from fbstream.endings import Ending, EndKind
from fbstream.live.hub import StreamHub
from fbstream.live.ingest import OWNED_ELSEWHERE, HubIngest, PublishRefused
from fbstream.live.tokens import KeyRing
from fbstream.media import IPublisher
from fbstream.registry.base import Ownership, RegistryUnavailable
from fbstream.registry.memory import MemoryRegistry
from fbstream.registry.records import VideoRecord, VideoState, VideoStatus
from tests.test_record import InlineReactor, StepPool
from tests.test_records import state as written_state

STREAM = "0123456789abcdef"
LEASE = 3.0
GRACE = 30.0
TAKEOVER_SILENCE = 5.0
CLAIM_WAIT = 10.0
VIDEO = RenditionInfo("240p", "video", "avc1.640015", 300_000, 426, 240, "30")


@implementer(IPublisher)
class Broadcaster:
    """A broadcaster's RTMP connection as the encoder sees it: told to stop, it closes its stream."""

    def __init__(self, description: str = "broadcaster") -> None:
        self.description = description
        self.sink: Any = None
        #: The reasons it was told to stop for.
        self.stopped: list[str] = []
        #: Seconds since it last sent anything.
        self.silent_for = 0.0

    def stop(self, reason: str) -> None:
        self.stopped.append(reason)
        self.leave(reason)

    def leave(self, reason: str = "publisher disconnected") -> None:
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.close(reason)


class Partition:
    """
    The registry as one encoder reaches it: while ``cut``, every call fails
    as an unreachable etcd does; while ``slow``, calls reach it only when
    :meth:`catch_up` is called (etcd electing a leader); while ``deaf``, it
    hears of no API record written (an etcd watch that is reconnecting).
    """

    def __init__(self, registry: MemoryRegistry) -> None:
        self.registry = registry
        self.lease_seconds = registry.lease_seconds
        self.cut = False
        self.slow = False
        self.deaf = False
        self._late: list[tuple[Any, tuple[Any, ...], Deferred[Any]]] = []

    def catch_up(self) -> None:
        """The calls held while ``slow`` reach the registry now, in the order they were made."""
        self.slow = False
        late, self._late = self._late, []
        for method, args, d in late:
            method(*args).chainDeferred(d)

    def watch_videos(self, changed: Any) -> Any:
        return self.registry.watch_videos(lambda stream, record: None if self.deaf else changed(stream, record))

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.registry, name)

        def call(*args: Any) -> Any:
            if self.cut:
                return fail(RegistryUnavailable("no etcd member answered"))
            if self.slow:
                d: Deferred[Any] = Deferred()
                self._late.append((method, args, d))
                return d
            return method(*args)

        return call


class Encoder:
    """One encoder, wired as ``roles/build.py`` wires it, on the test's reactor."""

    def __init__(self, name: str, number: int, reactor: InlineReactor, registry: MemoryRegistry,
                 keys: KeyRing, claim_wait: float = CLAIM_WAIT) -> None:
        self.reactor = reactor
        self.pool = StepPool()
        self.registry = Partition(registry)
        self.http = "tcp:10.0.0.%d:8081" % (number,)
        self.videos = VideoRegistry()

        def broadcasts(idle: Any) -> Broadcasts:
            return Broadcasts(self.registry, reactor, keys, name, self.http, GRACE, TAKEOVER_SILENCE, claim_wait,
                              idle=idle)

        self.consumers = EncoderConsumers(self.videos, TranscoderSettings(parse_rungs(["240:300"])), self.pool,
                                          reactor, None, 120.0, 2000, broadcasts)
        assert self.consumers.broadcasts is not None
        self.broadcasts = self.consumers.broadcasts
        self.hub = StreamHub("encoder", [self.consumers])
        self.ingest = HubIngest(self.hub, self.broadcasts)

    def publish(self, broadcaster: Broadcaster, token: str) -> Deferred[Any]:
        """What the RTMP connection does on ``publish``: fires once the broadcaster may send."""

        def accepted(sink: Any) -> Any:
            broadcaster.sink = sink
            return sink

        return self.ingest.open(STREAM, "token=" + token, broadcaster).addCallback(accepted)

    def cut(self, *numbers: int) -> None:
        """The transcoder's output for whole segments ``numbers``, as its pool hands it to the reactor."""
        video, period = self.video, self.video.periods[-1]
        outputs: list[Any] = []
        rendition = video.renditions.get(VIDEO.name)
        if rendition is None or period.index not in rendition.inits:  # each publish begins with one
            outputs.append(InitSegment(VIDEO, b"init"))
        for n in numbers:
            start = period.start_ms + (n - period.first_number) * 1000
            outputs += [Chunk("240p", n, b"moofmdat"), SegmentEnd("240p", n, start, 1000, 30)]
        self.consumers.encoders[STREAM]._apply_all(outputs)

    def transcode(self) -> None:
        """Let the transcoding pool run what is queued (the end of a publish, for one)."""
        self.pool.run_all()

    @property
    def video(self) -> LiveVideo:
        video = self.videos.get(STREAM)
        assert video is not None
        return video


class BroadcastCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = InlineReactor()
        self.reactor.advance(1_000_000)
        self.registry = MemoryRegistry(self.reactor, LEASE)
        self.keys = KeyRing.generate()
        self.token = self.keys.sign(STREAM, "dc1", self.reactor.seconds())
        self.registry.create_video(STREAM, VideoRecord(STREAM, "dc1", self.reactor.seconds()))
        self.a = Encoder("encoder0", 1, self.reactor, self.registry, self.keys)

    def go_live(self, encoder: Encoder, *numbers: int) -> Broadcaster:
        broadcaster = Broadcaster()
        self.successResultOf(encoder.publish(broadcaster, self.token))
        if numbers:
            encoder.cut(*numbers)
        return broadcaster

    def refused(self, d: Deferred[Any]) -> PublishRefused:
        return self.failureResultOf(d, PublishRefused).value

    def owner(self) -> Any:
        return self.successResultOf(self.registry.owner(STREAM))

    def state(self) -> VideoState:
        """The state of the live video its owners wrote to the registry."""
        state = self.successResultOf(self.registry.read_state(STREAM))
        assert state is not None
        return state

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass, each timer running at its time (as a reactor runs them)."""
        end = self.reactor.seconds() + seconds
        while True:
            due = [call.getTime() for call in self.reactor.getDelayedCalls() if call.getTime() <= end]
            if not due:
                break
            self.reactor.advance(max(0.0, min(due) - self.reactor.seconds()))
        self.reactor.advance(end - self.reactor.seconds())


class GoingLive(BroadcastCase):
    def test_a_publish_claims_the_stream_and_the_owner_writes_its_state(self) -> None:
        self.go_live(self.a, 1, 2, 3)
        self.assertEqual((self.owner().encoder, self.owner().fence), ("encoder0", 1))
        state = self.state()
        self.assertEqual((state.status, state.encoder, state.fence, state.last_number),
                         (VideoStatus.LIVE, "encoder0", 1, 3))
        # The lease is kept alive for as long as the broadcast lasts.
        self.advance(10 * LEASE)
        self.assertEqual(self.owner().fence, 1)

    def test_a_bad_token_is_refused_before_the_registry_is_asked(self) -> None:
        other = KeyRing.generate().sign(STREAM, "dc1", self.reactor.seconds())
        for token in (other, self.keys.sign("fedcba9876543210", "dc1", self.reactor.seconds()), ""):
            refusal = self.refused(self.a.publish(Broadcaster(), token))
            self.assertEqual((refusal.code, refusal.reason), ("NetStream.Publish.BadName", "token"))
        self.assertIsNone(self.owner())

    def test_an_unreachable_registry_refuses_the_publish(self) -> None:
        self.a.registry.cut = True
        refusal = self.refused(self.a.publish(Broadcaster(), self.token))
        self.assertEqual((refusal.code, refusal.reason), ("NetStream.Publish.Failed", "registry"))
        self.assertIn("the registry is unavailable", refusal.description)
        self.assertEqual(self.a.hub.streams, {})


    def test_a_registry_lost_after_the_claim_refuses_the_publish_and_lets_the_claim_go(self) -> None:
        self.patch(self.a.registry, "read_state", lambda stream: fail(RegistryUnavailable("no etcd member answered")))
        refusal = self.refused(self.a.publish(Broadcaster(), self.token))
        self.assertEqual((refusal.code, refusal.reason), ("NetStream.Publish.Failed", "registry"))
        self.assertIsNone(self.owner())
        self.assertEqual(self.a.hub.streams, {})

    def test_a_state_it_cannot_read_refuses_the_publish_and_lets_the_claim_go(self) -> None:
        self.patch(self.a.registry, "read_state", lambda stream: fail(KeyError("last_number")))
        refusal = self.refused(self.a.publish(Broadcaster(), self.token))
        self.assertEqual((refusal.code, refusal.reason), ("NetStream.Publish.Failed", "registry"))
        self.assertIsNone(self.owner())
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_an_ended_video_is_refused_even_if_letting_its_claim_go_fails(self) -> None:
        claim = self.successResultOf(self.registry.claim(STREAM, "encoder9", "tcp:10.0.0.9:8081"))
        self.successResultOf(self.registry.write_state(claim, written_state(status=VideoStatus.ENDED)))
        self.successResultOf(self.registry.release(claim))
        self.patch(self.a.registry, "release", lambda claim: fail(RegistryUnavailable("no etcd member answered")))
        refusal = self.refused(self.a.publish(Broadcaster(), self.token))
        self.assertEqual((refusal.code, refusal.reason), ("NetStream.Publish.BadName", "ended"))
        self.assertEqual(self.flushLoggedErrors(), [])
        self.advance(LEASE)  # the claim it could not let go lapses
        self.assertIsNone(self.owner())


class Grace(BroadcastCase):
    def test_a_broadcaster_who_does_not_come_back_ends_the_video_after_the_grace(self) -> None:
        broadcaster = self.go_live(self.a, 1, 2, 3)
        broadcaster.leave()
        self.a.transcode()
        video = self.a.video
        self.assertTrue(video.interrupted)
        self.assertEqual(self.state().status, VideoStatus.INTERRUPTED)
        self.advance(GRACE - 0.1)
        self.assertFalse(video.ended)
        self.assertEqual(self.owner().encoder, "encoder0")  # still renewed while it waits
        self.advance(0.2)
        self.assertTrue(video.ended)
        self.assertEqual(video.ending, Ending(EndKind.ABANDONED, "the broadcaster did not come back"))
        self.assertEqual(self.state().status, VideoStatus.ENDED)
        self.assertIsNone(self.owner())  # released
        # Too late now: the token is refused, and nothing is claimed.
        refusal = self.refused(self.a.publish(Broadcaster(), self.token))
        self.assertEqual(refusal.reason, "ended")
        self.assertIsNone(self.owner())

    def test_a_return_inside_the_grace_continues_the_same_video(self) -> None:
        self.go_live(self.a, 1, 2, 3).leave()
        self.a.transcode()
        video = self.a.video
        self.advance(GRACE - 1)
        self.go_live(self.a)
        self.assertIs(self.a.video, video)
        self.assertFalse(video.interrupted)
        self.assertEqual([p.first_number for p in video.periods], [1, 4])
        self.a.cut(4, 5)
        self.advance(GRACE)
        self.assertFalse(video.ended)
        state = self.state()
        self.assertEqual((state.status, state.fence, state.last_number), (VideoStatus.LIVE, 1, 5))
        self.assertEqual(len(state.periods), 2)


class SameBroadcaster(BroadcastCase):
    """A second connection of the broadcaster while the first still publishes (``takeover_silence``)."""

    def test_it_is_refused_while_the_first_still_sends(self) -> None:
        first = self.go_live(self.a, 1)
        first.silent_for = TAKEOVER_SILENCE - 1
        refusal = self.refused(self.a.publish(Broadcaster(), self.token))
        self.assertEqual(refusal.reason, "busy")
        self.assertEqual(first.stopped, [])

    def test_it_replaces_a_first_connection_gone_silent(self) -> None:
        first = self.go_live(self.a, 1, 2)
        video = self.a.video
        first.silent_for = TAKEOVER_SILENCE
        second = Broadcaster()
        d = self.a.publish(second, self.token)
        self.assertEqual(first.stopped, ["replaced by a new connection of the same broadcaster"])
        # The second waits for the first publish to be fully transcoded.
        self.assertNoResult(d)
        self.a.transcode()
        self.successResultOf(d)
        self.assertIs(self.a.video, video)
        self.assertEqual([p.first_number for p in video.periods], [1, 3])
        self.a.cut(3)
        self.assertEqual(self.state().status, VideoStatus.LIVE)
        self.assertEqual(self.owner().fence, 1)


class Takeover(BroadcastCase):
    def setUp(self) -> None:
        super().setUp()
        self.b = Encoder("encoder1", 2, self.reactor, self.registry, self.keys)

    def probes(self) -> list[tuple[str, int]]:
        return [(host, port) for host, port, *_ in self.reactor.tcpClients]

    def test_the_next_encoder_continues_once_the_dead_owners_lease_lapses(self) -> None:
        self.go_live(self.a, 1, 2, 3)
        self.a.broadcasts.stop()  # as in a crash: its renewals stop and nothing is released
        d = self.b.publish(Broadcaster(), self.token)
        self.assertNoResult(d)
        self.assertEqual(self.probes(), [("10.0.0.1", 8081)])  # is the owner there?
        self.advance(LEASE - 0.1)
        self.assertNoResult(d)
        self.advance(0.6)  # it asks again every half second
        self.successResultOf(d)
        owner = self.owner()
        self.assertEqual((owner.encoder, owner.fence), ("encoder1", 2))
        # The same live video, from the state the dead owner wrote: its
        # periods, then one of its own past a number of margin.
        video = self.b.video
        self.assertEqual([(p.first_number, p.end_ms) for p in video.periods], [(1, 3000), (5, None)])
        self.b.cut(5)
        state = self.state()
        self.assertEqual((state.status, state.encoder, state.fence, state.last_number),
                         (VideoStatus.LIVE, "encoder1", 2, 5))

    def test_an_owner_that_answers_keeps_the_stream(self) -> None:
        self.go_live(self.a, 1)
        d = self.b.publish(Broadcaster(), self.token)
        host, port, factory, *_ = self.reactor.tcpClients[-1]
        self.assertEqual((host, port), ("10.0.0.1", 8081))
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        protocol.makeConnection(StringTransport())
        refusal = self.refused(d)
        self.assertEqual((refusal.code, refusal.reason), (OWNED_ELSEWHERE, "owned"))
        self.assertIn("owned by encoder encoder0", refusal.description)
        self.assertEqual(self.owner().encoder, "encoder0")

    def test_claim_wait_bounds_the_wait_for_a_lease_that_does_not_lapse(self) -> None:
        # The owner renews its lease but does not answer the probe (the
        # encoders cannot reach each other): the claim waits claim_wait, no more.
        self.go_live(self.a, 1)
        b = Encoder("encoder1", 2, self.reactor, self.registry, self.keys, claim_wait=2 * LEASE)
        asked = self.reactor.seconds()
        d = b.publish(Broadcaster(), self.token)
        self.advance(2 * LEASE - 0.1)
        self.assertNoResult(d)
        self.advance(0.6)
        refusal = self.refused(d)
        self.assertEqual((refusal.code, refusal.reason), (OWNED_ELSEWHERE, "owned"))
        self.assertIn("still owned by encoder encoder0", refusal.description)
        self.assertLessEqual(self.reactor.seconds() - asked, 2 * LEASE + 0.5)
        self.assertEqual(self.owner().encoder, "encoder0")


class Fencing(BroadcastCase):
    """
    The registry stalls for the owner (etcd electing a leader) long enough
    for its lease to lapse and another encoder to claim the stream; when the
    old owner's calls go through, its next write or renewal is refused: it
    stops, with the reason, and has written nothing over the new owner's state.
    """

    def replaced(self, write_first: bool) -> Broadcaster:
        broadcaster = self.go_live(self.a, 1, 2)
        self.advance(0.05)
        self.a.registry.slow = True
        if write_first:
            self.a.cut(3)  # its state write is held before any renewal
        self.advance(LEASE + 0.05)
        b = Encoder("encoder1", 2, self.reactor, self.registry, self.keys)
        self.successResultOf(b.publish(Broadcaster(), self.token))
        b.cut(4)
        self.assertEqual(broadcaster.stopped, [])  # it has not found out yet
        self.a.registry.catch_up()
        return broadcaster

    def assert_stopped(self, broadcaster: Broadcaster, reason: str) -> None:
        self.assertEqual(broadcaster.stopped, [reason])
        self.assertTrue(self.a.video.ended)
        self.assertEqual(self.a.video.ending, Ending(EndKind.OWNERSHIP_LOST, reason))
        state = self.state()
        self.assertEqual((self.owner().encoder, state.encoder, state.last_number), ("encoder1", "encoder1", 4))
        # Nothing more comes of it.
        self.a.transcode()
        self.advance(GRACE)
        self.assertEqual(broadcaster.stopped, [reason])
        self.assertEqual(self.state(), state)
        self.assertEqual(self.owner().encoder, "encoder1")

    def test_on_its_next_write(self) -> None:
        broadcaster = self.replaced(write_first=True)
        self.assert_stopped(broadcaster, "another encoder took over stream %s" % (STREAM,))

    def test_on_its_next_renewal(self) -> None:
        broadcaster = self.replaced(write_first=False)
        self.assert_stopped(broadcaster, "the lease on stream %s lapsed" % (STREAM,))


class RegistryAway(BroadcastCase):
    """The registry cannot be reached from the owner (renewals every third of the lease fail)."""

    def test_between_two_renewals_nothing_changes(self) -> None:
        # Away from just after a renewal until just before the second next:
        # one renewal fails, the next keeps the lease.
        broadcaster = self.go_live(self.a, 1, 2)
        self.advance(0.05)
        self.a.registry.cut = True
        self.advance(2 * LEASE / 3 - 0.1)
        self.a.cut(3)  # a state write that fails
        self.a.registry.cut = False
        self.advance(10 * LEASE)
        self.assertEqual(broadcaster.stopped, [])
        self.assertFalse(self.a.video.ended)
        self.assertEqual((self.owner().encoder, self.owner().fence), ("encoder0", 1))
        self.a.cut(4)
        self.assertEqual(self.state().last_number, 4)

    def test_shorter_than_the_lease_over_its_last_renewals_nothing_changes(self) -> None:
        # Away from just after a renewal for 0.85 of the lease: the next two
        # renewals fail, and the lease would lapse before the third; a
        # renewal tried again soon after the registry is back keeps it.
        broadcaster = self.go_live(self.a, 1, 2)
        self.advance(LEASE / 3 + 0.01)  # just after a renewal that worked
        self.a.registry.cut = True
        self.advance(0.85 * LEASE)
        self.a.registry.cut = False
        self.advance(10 * LEASE)
        self.assertEqual(broadcaster.stopped, [])
        self.assertFalse(self.a.video.ended)
        self.assertEqual((self.owner().encoder, self.owner().fence), ("encoder0", 1))

    def test_for_longer_than_the_lease_the_broadcast_stops(self) -> None:
        broadcaster = self.go_live(self.a, 1, 2)
        self.advance(0.05)
        self.a.registry.cut = True
        self.advance(LEASE - 0.1)
        self.assertEqual(broadcaster.stopped, [])
        # Found out at the first renewal that fails more than a lease after
        # the last that worked.
        self.advance(LEASE / 3 + 0.1)
        reason = "the registry was unreachable for longer than the lease"
        self.assertEqual(broadcaster.stopped, [reason])
        self.assertTrue(self.a.video.ended)
        self.assertEqual(self.a.video.ending, Ending(EndKind.OWNERSHIP_LOST, reason))
        # Back, it is not the owner any more, and wrote nothing after it lost the lease.
        self.a.registry.cut = False
        self.assertIsNone(self.owner())
        self.assertEqual(self.state().status, VideoStatus.LIVE)  # its last word; the next owner goes on from it


class MissedWrites(BroadcastCase):
    """A state write the registry misses is made again once it is back, while this encoder owns the stream."""

    def test_an_interruption_is_recorded_once_the_registry_is_back(self) -> None:
        broadcaster = self.go_live(self.a, 1, 2)
        self.advance(0.05)
        self.a.registry.cut = True
        broadcaster.leave()
        self.a.transcode()
        self.assertEqual(self.state().status, VideoStatus.LIVE)
        self.advance(LEASE / 3)
        self.a.registry.cut = False
        self.advance(LEASE / 3)
        self.assertEqual(self.state().status, VideoStatus.INTERRUPTED)
        self.assertEqual(self.owner().encoder, "encoder0")

    def test_an_end_is_recorded_before_the_stream_is_released(self) -> None:
        # The grace period ends while the registry is away: the video must
        # read as ended there (or a broadcaster coming back later would
        # revive it from an interrupted state) before it is let go.
        self.go_live(self.a, 1, 2).leave()
        self.a.transcode()
        self.advance(GRACE - 0.5)
        self.a.registry.cut = True
        self.advance(1.0)
        self.assertTrue(self.a.video.ended)
        self.a.registry.cut = False
        self.advance(LEASE / 3)
        self.assertEqual(self.state().status, VideoStatus.ENDED)
        self.assertIsNone(self.owner())
        self.assertEqual(self.refused(self.a.publish(Broadcaster(), self.token)).reason, "ended")
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class EndedByTheAPI(BroadcastCase):
    def end(self) -> None:
        record = self.successResultOf(self.registry.get_video(STREAM))
        assert record is not None
        self.registry.put_video(STREAM, record.end(self.reactor.seconds()))

    def assert_ended(self) -> None:
        self.assertTrue(self.a.video.ended)
        self.assertEqual(self.a.video.ending, Ending(EndKind.ENDED_BY_API, "the live video was ended"))
        self.assertEqual(self.state().status, VideoStatus.ENDED)
        self.assertIsNone(self.owner())
        refusal = self.refused(self.a.publish(Broadcaster(), self.token))
        self.assertEqual(refusal.reason, "ended")

    def test_its_broadcaster_is_stopped_at_once(self) -> None:
        broadcaster = self.go_live(self.a, 1, 2)
        self.end()
        self.assertEqual(broadcaster.stopped, ["the live video was ended"])
        self.a.transcode()
        self.assert_ended()

    def test_an_interrupted_video_ends_at_once(self) -> None:
        self.go_live(self.a, 1, 2).leave()
        self.a.transcode()
        self.end()
        self.assert_ended()
        self.assertEqual(self.reactor.getDelayedCalls(), [])  # no grace timer, no renewals

    def test_a_missed_notice_is_read_back_with_the_next_state_write(self) -> None:
        broadcaster = self.go_live(self.a, 1, 2)
        self.a.registry.deaf = True
        self.end()
        self.assertEqual(broadcaster.stopped, [])
        self.a.cut(3)
        self.assertEqual(broadcaster.stopped, ["the live video was ended"])
        self.a.transcode()
        self.assert_ended()


class OwnershipLease(SynchronousTestCase):
    """:class:`Ownership` alone: renewals every third of the lease, one loss report."""

    def setUp(self) -> None:
        self.reactor = InlineReactor()
        self.registry = MemoryRegistry(self.reactor, LEASE)
        self.claim = self.successResultOf(self.registry.claim(STREAM, "encoder0", "tcp:10.0.0.1:8081"))
        self.lost: list[Ending] = []
        self.ownership = Ownership(self.registry, self.claim, self.reactor, self.lost.append)

    def test_renewals_keep_the_lease_and_stop_lets_it_lapse(self) -> None:
        for _ in range(30):
            self.reactor.advance(LEASE / 3)
        self.assertEqual(self.successResultOf(self.registry.owner(STREAM)), self.claim.owner)
        self.ownership.stop()
        self.reactor.advance(LEASE)
        self.assertIsNone(self.successResultOf(self.registry.owner(STREAM)))
        self.assertEqual(self.lost, [])

    def test_a_renewal_that_fails_after_the_stop_starts_nothing(self) -> None:
        pending: list[Deferred[None]] = []

        def renew(claim: Any) -> Deferred[None]:
            pending.append(Deferred())
            return pending[-1]

        self.patch(self.registry, "renew", renew)
        self.reactor.advance(LEASE / 3)  # a renewal goes out, and hangs
        self.assertEqual(len(pending), 1)
        self.ownership.stop()
        pending[0].errback(RegistryUnavailable("no etcd member answered"))
        self.reactor.advance(10 * LEASE)
        self.assertEqual(len(pending), 1)
        self.assertEqual(self.lost, [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_a_loss_is_reported_once_and_renewals_stop(self) -> None:
        self.successResultOf(self.registry.release(self.claim))
        self.successResultOf(self.registry.claim(STREAM, "encoder1", "tcp:10.0.0.2:8081"))
        self.failureResultOf(self.ownership.write(written_state()))
        self.reactor.advance(LEASE)
        self.assertEqual(self.lost, [Ending(EndKind.OWNERSHIP_LOST, "another encoder took over stream %s" % (STREAM,))])
        self.assertTrue(self.ownership.lost)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
