"""The encoder's per-stream worker: bounded backlog, refusal, outputs applied in order."""

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fbstream.encoder.ladder import parse_rungs
from fbstream.encoder.store import LiveVideo
from fbstream.encoder.transcode import Transcoder, TranscoderSettings
from fbstream.encoder.worker import StreamEncoder
from fbstream.endings import Ending, EndKind
from fbstream.media import MediaMessage
from tests.test_record import InlineReactor, StepPool


def frame(ts, key=False):
    return MediaMessage(9, ts, (b"\x17" if key else b"\x27") + b"\x01\x00\x00\x00" + b"x" * 100)


class BacklogTests(SynchronousTestCase):
    def setUp(self):
        self.pool = StepPool()
        self.refusals: list[str] = []
        reactor = InlineReactor()
        self.worker = StreamEncoder(
            LiveVideo("cam", 0.0, 120.0, None, reactor),
            Transcoder(TranscoderSettings(parse_rungs(["240:300"]))),
            self.pool,
            reactor,
            None,
            2000,
            self.refusals.append,
        )

    def test_a_stalled_transcoder_never_holds_more_than_the_lag_bound(self):
        # The pool never runs: the first batch is "in flight" forever.
        for i in range(300):  # 10 s at 30 fps
            self.worker.media(frame(i * 33, key=i % 60 == 0))
        pending = [m for m in self.worker._pending if m.type_id == 9]
        self.assertLessEqual((pending[-1].timestamp - pending[0].timestamp), 2000)
        dropped = self.worker.m_dropped._value.get()
        self.assertGreater(dropped, 200)
        # After a drop, video resumes only on a keyframe.
        self.assertEqual(pending[0].payload[0], 0x17)

    def test_the_further_behind_the_more_frames_are_shed(self):
        # Each batch the pool finishes, the worker looks at how much video
        # waited meanwhile: half the frames go past 0.5 s of it, two thirds
        # past 1 s, three quarters past 1.5 s, and all are kept again once
        # it is back under 0.3 s.
        at = 0
        self.worker.media(frame(at, key=True))  # the first batch, in flight
        levels = []
        for waited_ms in (700, 1100, 1600, 700, 100):
            for _ in range(waited_ms // 33):
                at += 33
                self.worker.media(frame(at))
            on_result, f, args, kw = self.pool.jobs.pop(0)
            on_result(True, f(*args, **kw))  # done: the next batch is taken
            levels.append(self.worker.transcoder.shedding)
        self.assertEqual(levels, [1, 2, 3, 3, 0])

    def test_refused_input_stops_the_publisher(self):
        self.worker.media(MediaMessage(9, 0, b"\x90hvc1\x01\x02\x03"))
        self.pool.run_all()
        self.assertEqual(self.refusals, ["video codec 'hvc1' cannot be transcoded (only H.264)"])
        self.assertIsNotNone(self.worker.video.failure)

    def test_end_flushes_and_marks_the_video_ended(self):
        self.worker.ended("FCUnpublish")
        self.pool.run_all()
        self.assertTrue(self.worker.video.ended)
        self.assertEqual(self.worker.video.ending, Ending(EndKind.PUBLISH_ENDED, "FCUnpublish"))

    def test_an_ended_stream_leaves_no_series_behind(self):
        from prometheus_client import REGISTRY
        from prometheus_client.exposition import generate_latest

        for i in range(3):
            self.worker.media(frame(i * 33, key=i == 0))
        self.worker.m_lag.observe(0.1)
        self.assertIn(b'stream="cam"', generate_latest(REGISTRY))
        self.worker.ended("FCUnpublish")
        self.pool.run_all()
        self.assertNotIn(b'stream="cam"', generate_latest(REGISTRY))


class ArchiveTests(SynchronousTestCase):
    def test_retention_and_reload(self):
        import os
        import time as _time

        from fbstream.encoder.service import load_archive
        from fbstream.encoder.store import HISTORY, Archive, LiveVideo, history_line
        from fbstream.encoder.transcode import RenditionInfo
        from fbstream.encoder.web import VideoRegistry

        directory = self.mktemp()
        pool = StepPool()
        reactor = InlineReactor()
        archive = Archive(directory, pool, reactor)
        video = LiveVideo("old", 1000.0, 120.0, None, reactor)
        video.add_rendition(RenditionInfo("240p", "video", "avc1.640015", 300000, 426, 240, "30"), b"init")
        video.chunk("240p", 1, b"moofmdat")
        video.segment_end("240p", 1, 0, 1000)
        video.end(Ending(EndKind.PUBLISH_ENDED, "done"))
        archive.write("old", ("state.json",), video.state().to_json().encode())
        archive.append("old", (HISTORY,), history_line("240p", 1, 0, 1000))
        archive.write("old", ("240p", "1.m4s"), b"moofmdat")
        pool.run_all()
        registry = VideoRegistry()
        self.assertEqual(load_archive(archive, registry, 120.0, reactor), [])  # none interrupted
        reloaded = registry.get("old")
        assert reloaded is not None
        self.assertTrue(reloaded.ended)
        self.assertEqual(reloaded.ending, Ending(EndKind.ARCHIVED, "archived"))
        self.assertEqual(reloaded.renditions["240p"].history, {1: (0, 1000)})
        self.assertEqual(reloaded.renditions["240p"].inits, {})  # read from disk when asked
        d = archive.expire(3600, _time.time() + 7200)
        pool.run_all()
        self.assertEqual(self.successResultOf(d), ["old"])
        self.assertFalse(os.path.exists(os.path.join(directory, "old")))

    def test_a_video_a_restart_interrupted_stays_live_until_its_grace_is_over(self):
        from fbstream.encoder import manifest
        from fbstream.encoder.service import end_unless_resumed, load_archive
        from fbstream.encoder.store import HISTORY, Archive, ArchiveState, LiveVideo, history_line
        from fbstream.encoder.transcode import RenditionInfo
        from fbstream.encoder.web import VideoRegistry

        directory = self.mktemp()
        pool = StepPool()
        reactor = InlineReactor()
        archive = Archive(directory, pool, reactor)
        video = LiveVideo("cut", 1000.0, 120.0, None, reactor)
        video.add_rendition(RenditionInfo("240p", "video", "avc1.640015", 300000, 426, 240, "30"), b"init")
        for n in (1, 2, 3):
            video.chunk("240p", n, b"moofmdat")
            video.segment_end("240p", n, (n - 1) * 1000, 1000)
        # The encoder died here: its last state says live, its period open.
        archive.write("cut", ("state.json",), video.state().to_json().encode())
        for n in (1, 2, 3):
            archive.append("cut", (HISTORY,), history_line("240p", n, (n - 1) * 1000, 1000))
        archive.append("cut", (HISTORY,), b'["240p", 4, 30')  # torn by the crash
        pool.run_all()
        registry = VideoRegistry()
        [reloaded] = load_archive(archive, registry, 120.0, reactor)
        self.assertIs(registry.get("cut"), reloaded)
        self.assertFalse(reloaded.ended)
        self.assertTrue(reloaded.interrupted)
        self.assertEqual(reloaded.periods[-1].end_ms, 3000)
        self.assertEqual(reloaded.complete_through, 3)
        self.assertIn('type="dynamic"', manifest.mpd(reloaded, 1000.0 + 10).decode())
        end_unless_resumed(archive, registry, reloaded)
        pool.run_all()
        self.assertTrue(reloaded.ended)
        self.assertEqual(reloaded.ending, Ending(
            EndKind.ABANDONED, "the broadcaster did not come back after the encoder restarted"))
        self.assertIn('type="static"', manifest.mpd(reloaded, 1000.0 + 40).decode())
        with open(os.path.join(directory, "cut", "state.json")) as f:
            self.assertTrue(ArchiveState.from_json(f.read()).ended)


class ArchiveWriteFailures(SynchronousTestCase):
    """Out of file descriptors or disk: a write is retried, then logged as lost; never an unhandled error."""

    def archive(self, failures):
        from fbstream.encoder.store import Archive

        reactor = InlineReactor()
        pool = StepPool()
        archive = Archive(self.mktemp(), pool, reactor)
        real = __import__("fbstream.encoder.store", fromlist=["_write_atomically"])._write_atomically
        calls = []

        def flaky(path, data):
            calls.append(path)
            if len(calls) <= failures:
                raise OSError(24, "Too many open files")
            return real(path, data)

        self.patch(__import__("fbstream.encoder.store", fromlist=["x"]), "_write_atomically", flaky)
        return archive, reactor, pool, calls

    def run_until_settled(self, reactor, pool):
        for _ in range(10):
            pool.run_all()
            reactor.advance(5)
        pool.run_all()

    def test_a_transient_error_is_retried(self):
        archive, reactor, pool, calls = self.archive(failures=2)
        d = archive.write("cam", ("240p", "7.m4s"), b"segment")
        self.run_until_settled(reactor, pool)
        self.assertIs(self.successResultOf(d), True)
        self.assertEqual(len(calls), 3)
        with open(archive.path("cam", "240p", "7.m4s"), "rb") as f:
            self.assertEqual(f.read(), b"segment")

    def test_a_lasting_error_is_a_logged_loss(self):
        archive, reactor, pool, calls = self.archive(failures=100)
        d = archive.write("cam", ("240p", "7.m4s"), b"segment")
        self.run_until_settled(reactor, pool)
        self.assertIs(self.successResultOf(d), False)
        self.assertEqual(len(calls), 1 + len(archive.RETRY_DELAYS))
        self.assertEqual(self.flushLoggedErrors(), [])


class EndedVideos(SynchronousTestCase):
    def test_a_publish_that_finishes_after_the_end_leaves_the_video_ended(self):
        from fbstream.encoder.store import LiveVideo
        from fbstream.endings import Ending, EndKind

        video = LiveVideo("cam", 1000.0, 120.0, None, Clock())
        video.end(Ending(EndKind.ENDED_BY_API, "the live video was ended through the API"))
        end_ms = video.periods[-1].end_ms
        video.close_period()  # the publisher the end stopped goes away
        self.assertTrue(video.ended)
        self.assertFalse(video.interrupted)
        self.assertEqual(video.periods[-1].end_ms, end_ms)


class PublishTimes(SynchronousTestCase):
    """Every change a player must reload for is stamped by the video's clock."""

    def test_each_change_takes_the_clock_s_time(self):
        from fbstream.encoder.store import LiveVideo
        from fbstream.encoder.transcode import RenditionInfo

        clock = Clock()
        clock.advance(5000.0)
        video = LiveVideo("cam", 1000.0, 120.0, None, clock)
        self.assertEqual(video.publish_time, 1000.0)  # its start, until something changes
        stamps = []

        def after(seconds, change):
            clock.advance(seconds)
            change()
            stamps.append(video.publish_time)

        info = RenditionInfo("240p", "video", "avc1.640015", 300000, 426, 240, "30")
        after(1.5, lambda: video.add_rendition(info, b"init"))
        after(2.0, lambda: video.chunk("240p", 1, b"moofmdat"))  # a part is no new manifest
        after(1.0, lambda: video.segment_end("240p", 1, 0, 1000))
        after(3.0, video.close_period)
        after(4.0, lambda: video.open_period(clock.seconds()))
        after(0.5, lambda: video.end(Ending(EndKind.PUBLISH_ENDED, "done")))
        self.assertEqual(stamps, [5001.5, 5001.5, 5004.5, 5007.5, 5011.5, 5012.0])


class LongBroadcasts(SynchronousTestCase):
    """A day of history costs each new segment, state write and playlist what an hour does."""

    def video(self, hours):
        from fbstream.encoder.store import LiveVideo
        from fbstream.encoder.transcode import RenditionInfo

        video = LiveVideo("long", 1000.0, 120.0, None, Clock())
        for name in ("720p", "240p"):
            rendition = video.add_rendition(
                RenditionInfo(name, "video", "avc1.640015", 300000, 426, 240, "30"), b"init")
            history = Watched((n, ((n - 1) * 1000, 1000)) for n in range(1, int(hours * 3600) + 1))
            rendition.history = history
            rendition.newest = max(history)
        return video

    def test_per_segment_work_does_not_read_the_history(self):
        from fbstream.encoder import manifest

        for hours in (1, 24):
            video = self.video(hours)
            Watched.reads = 0
            newest = video.renditions["720p"].newest
            for name in ("720p", "240p"):
                video.chunk(name, newest + 1, b"moofmdat")
                video.segment_end(name, newest + 1, newest * 1000, 1000)
            state = video.state().to_json()
            manifest.media_playlist(video, video.renditions["720p"])
            self.assertLess(Watched.reads, 1000, hours)  # the playlist's window, not 86,400
            self.assertLess(len(state), 2000, hours)
            self.assertEqual(video.complete_through, newest + 1)


class Watched(dict):
    """A history that counts how many of its numbers are read in order."""

    reads = 0

    def __iter__(self):
        for key in super().__iter__():
            Watched.reads += 1
            yield key

    def __reversed__(self):
        for key in super().__reversed__():
            Watched.reads += 1
            yield key
