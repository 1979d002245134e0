"""
The encoder's consumer of a live stream: it hands the stream's messages to
its :class:`~fbstream.encoder.transcode.Transcoder` in a dedicated thread pool
(one batch at a time per stream, so a stream's work stays in order), and
applies what comes back to the stream's :class:`~fbstream.encoder.store.LiveVideo`
and archive on the reactor thread.

If the machine cannot keep up, the backlog is bounded by media time: past
``max_lag_ms`` the video waiting to be transcoded is dropped up to the next
keyframe (counted and logged), and ingest is never slowed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from fbstream.encoder import metrics as em
from fbstream.encoder.store import HISTORY, Archive, LiveVideo, history_line
from fbstream.encoder.transcode import (
    Chunk,
    InitSegment,
    Notice,
    Output,
    Refused,
    SegmentEnd,
    Transcoder,
)
from fbstream.endings import Ending, EndKind
from fbstream.media import IStreamConsumer, MediaMessage
from fbstream.reactors import IReactorTimeFromThreads
from fbstream.rtmp import amf0, flv
from fbstream.rtmp.errors import RTMPError
from fbstream.rtmp.messages import AUDIO, DATA_AMF0, VIDEO

#: How many frame receipt times are remembered for the availability lag.
_RECEIPTS = 600
#: Video waiting this long (ms of media) means the transcoder is behind real
#: time: it sheds frames until the wait is back under SHED_UNTIL_MS. A viewer
#: at the 1.2 s target latency holds about a second of media, so shedding
#: starts while half of that is left: a moment at half the frame rate instead
#: of a stall. Each further SHED_AFTER_MS of wait sheds more (a third of the
#: frames kept, then a quarter): on a machine too busy for half the work the
#: wait would otherwise grow until max_lag_ms drops whole seconds of video.
SHED_AFTER_MS = 500
SHED_UNTIL_MS = 300
#: At most one frame in this many plus one is kept while shedding.
MOST_SHED = 3


def _video_span(messages: list[MediaMessage]) -> int:
    """Milliseconds of media between the first and the last video message."""
    first = last = None
    for message in messages:
        if message.type_id == VIDEO:
            if first is None:
                first = message.timestamp
            last = message.timestamp
    if first is None or last is None:
        return 0
    return (last - first) & 0xFFFFFFFF


@implementer(IStreamConsumer)
class StreamEncoder:
    log = Logger()

    def __init__(
        self,
        video: LiveVideo,
        transcoder: Transcoder,
        pool: ThreadPool,
        reactor: IReactorTimeFromThreads,
        archive: Archive | None,
        max_lag_ms: int,
        on_refused: Callable[[str], None],
        on_finished: Callable[[str], None] | None = None,
        on_progress: Callable[[], None] | None = None,
    ) -> None:
        self.video = video
        self.transcoder = transcoder
        self.pool = pool
        self.reactor = reactor
        self.archive = archive
        self.max_lag_ms = max_lag_ms
        self.on_refused = on_refused
        #: Called when the publish is over, instead of ending the video (its
        #: broadcaster may come back).
        self.on_finished = on_finished
        #: Called when a segment is complete everywhere.
        self.on_progress = on_progress
        self._pending: list[MediaMessage] = []
        #: When the oldest pending message arrived.
        self._waiting_since = 0.0
        self._busy = False
        self._ending: str | None = None
        self._finished = False
        self._dropping = False
        self._receipts: OrderedDict[int, float] = OrderedDict()
        self._last_receipt: dict[int, float] = {}
        self._seen = (0, 0, 0.0)
        stream = video.stream
        self.m_frames_in = em.FRAMES_IN.labels(stream=stream)
        self.m_dropped = em.DROPPED_FRAMES.labels(stream=stream)
        self.m_shed = em.SHED_FRAMES.labels(stream=stream)
        self._shed_seen = 0
        self.m_encode = em.ENCODE_SECONDS.labels(stream=stream)
        self.m_lag = em.AVAILABILITY_LAG.labels(stream=stream)
        #: Fires once the publish is fully transcoded (or failed).
        self.done: Deferred[None] = Deferred()
        #: Availability lag of each segment, seconds (newest last; for benchmarks).
        self.lags: list[float] = []

    # IStreamConsumer, on the reactor thread ---------------------------------

    def media(self, message: MediaMessage) -> None:
        if self._ending is not None:
            return
        if message.type_id == DATA_AMF0:
            self._metadata(message)
            return
        if message.type_id not in (AUDIO, VIDEO):
            return
        if message.type_id == VIDEO:
            tag = flv.parse_video(message.payload)
            if not tag.sequence_header:
                if self._dropping:
                    if not tag.keyframe:
                        self.m_dropped.inc()
                        return
                    self._dropping = False
                pts = (message.timestamp + tag.composition_time) & 0xFFFFFFFF
                self._receipts[pts] = self.reactor.seconds()
                if len(self._receipts) > _RECEIPTS:
                    self._receipts.popitem(last=False)
        if not self._pending:
            self._waiting_since = self.reactor.seconds()
        self._pending.append(message)
        self._check_backlog()
        self._kick()

    def _metadata(self, message: MediaMessage) -> None:
        """The publisher's frame rate, for the encoders' rate control and the manifests."""
        try:
            values = amf0.decode_all(message.payload)
        except RTMPError:
            return
        if len(values) < 2 or values[0] != "onMetaData":
            return
        table = values[1].items if isinstance(values[1], amf0.ECMAArray) else values[1]
        rate = table.get("framerate") if isinstance(table, dict) else None
        if isinstance(rate, float) and 1 <= rate <= 240 and not self.transcoder.videos:
            self.transcoder.frame_rate = rate

    def ended(self, reason: str) -> None:
        self._ending = reason
        self._kick()

    def _check_backlog(self) -> None:
        span = _video_span(self._pending)
        if span <= self.max_lag_ms:
            return
        kept = [m for m in self._pending if m.type_id != VIDEO or flv.parse_video(m.payload).sequence_header]
        dropped = len(self._pending) - len(kept)
        self._pending = kept
        self._dropping = True
        self.m_dropped.inc(dropped)
        self.log.warn(
            "{stream}: transcoding is {span} ms behind; dropped {n} video frames",
            stream=self.video.stream, span=span, n=dropped,
        )

    # The serial worker --------------------------------------------------------

    def _kick(self) -> None:
        if self._busy or self._finished:
            return
        if not self._pending and self._ending is None:
            return
        batch, self._pending = self._pending, []
        finishing = self._ending is not None
        self._busy = True
        # What piled up while the last batch ran is how far behind real time
        # the transcoder is: past half a second it sheds frames until it is
        # back within SHED_UNTIL_MS.
        behind = _video_span(batch)
        level = int(self.transcoder.shedding)
        if behind > SHED_AFTER_MS:
            wanted = max(level, min(MOST_SHED, behind // SHED_AFTER_MS))
        elif level and behind > SHED_UNTIL_MS:
            wanted = level
        else:
            wanted = 0
        if wanted > level:
            # Media that waited less than it spans came in a burst: the
            # publisher was late (or the link to it), not only this worker.
            waited = round((self.reactor.seconds() - self._waiting_since) * 1000)
            self.log.warn("{stream}: transcoding is {behind} ms behind (the oldest frame waited {waited} ms); "
                          "encoding one frame in {n}", stream=self.video.stream, behind=behind, waited=waited,
                          n=wanted + 1)
        self.transcoder.shedding = wanted
        d = deferToThreadPool(self.reactor, self.pool, self._work, batch, finishing)
        d.addCallbacks(self._done, self._failed, callbackArgs=(finishing,))

    def _work(self, batch: list[MediaMessage], finishing: bool) -> list[Output]:
        # In a pool thread: the only place the transcoder runs. What each
        # message makes goes to the reactor at once, not with the batch: a
        # chunk is served the moment it is cut (the batch's result follows
        # them, in order, through the same queue).
        for message in batch:
            out = self.transcoder.feed(message)
            if out:
                self.reactor.callFromThread(self._apply_all, out)
        return self.transcoder.finish() if finishing else []

    def _apply_all(self, outputs: list[Output]) -> None:
        for output in outputs:
            self._apply(output)

    def _done(self, outputs: list[Output], finishing: bool) -> None:
        self._busy = False
        self._apply_all(outputs)
        self._count()
        if finishing:
            self._finish()
        else:
            self._kick()

    def _failed(self, failure: Failure) -> None:
        self._busy = False
        self.log.failure("transcoding {stream} failed", failure, stream=self.video.stream)
        self._refuse("the encoder failed: %s" % (failure.getErrorMessage(),))
        if self._ending is not None and not self._finished:
            self._finish()

    def _count(self) -> None:
        tx = self.transcoder
        frames_in, frames_out, seconds = self._seen
        if tx.frames_in > frames_in:
            self.m_frames_in.inc(tx.frames_in - frames_in)
        if tx.frames_out > frames_out:
            for name in self.video.renditions:
                if name != "audio":
                    em.FRAMES_OUT.labels(stream=self.video.stream, rendition=name).inc(tx.frames_out - frames_out)
            self.m_encode.observe((tx.encode_seconds - seconds) / (tx.frames_out - frames_out))
        self._seen = (tx.frames_in, tx.frames_out, tx.encode_seconds)
        if tx.frames_shed > self._shed_seen:
            self.m_shed.inc(tx.frames_shed - self._shed_seen)
            self._shed_seen = tx.frames_shed

    def _finish(self) -> None:
        self._finished = True
        reason = self._ending or "ended"
        if self.on_finished is not None:
            self.video.close_period()
            self.on_finished(reason)
        else:
            self.video.end(Ending(EndKind.PUBLISH_ENDED, reason))
        self._write_state()
        em.LIVE_VIDEOS.dec()
        if self.video.ended:  # what the last batch counted after the end
            em.forget(self.video.stream, self.video.renditions)
        if not self.done.called:
            self.done.callback(None)

    def _refuse(self, reason: str) -> None:
        if self.video.failure is None:
            self.video.failure = reason
            self.on_refused(reason)
        self._pending = []

    # Outputs, on the reactor thread -----------------------------------------

    def _apply(self, output: Output) -> None:
        video = self.video
        if isinstance(output, Chunk):
            video.chunk(output.rendition, output.number, output.data)
        elif isinstance(output, SegmentEnd):
            before = video.complete_through
            if output.last_source_pts >= 0:
                received = self._receipts.get(output.last_source_pts)
                if received is not None:
                    self._last_receipt[output.number] = received
            seg = video.segment_end(output.rendition, output.number, output.start_ms, output.duration_ms)
            em.SEGMENTS.labels(stream=video.stream, rendition=output.rendition).inc()
            if seg is not None and self.archive is not None:
                self.archive.write(video.stream, (output.rendition, "%d.m4s" % (output.number,)), seg.data())
                self.archive.append(video.stream, (HISTORY,), history_line(
                    output.rendition, output.number, output.start_ms, output.duration_ms))
            self._note_complete(before)
        elif isinstance(output, InitSegment):
            video.add_rendition(output.info, output.data)
            if self.archive is not None:
                self.archive.write(video.stream, (output.info.name, video.periods[-1].init_name()), output.data)
        elif isinstance(output, Notice):
            if output.level == "error":
                self.log.error("{stream}: {message}", stream=video.stream, message=output.message)
            else:
                self.log.warn("{stream}: {message}", stream=video.stream, message=output.message)
        elif isinstance(output, Refused):
            self.log.error("{stream}: refused: {reason}", stream=video.stream, reason=output.reason)
            self._refuse(output.reason)

    def _note_complete(self, before: int) -> None:
        now = self.reactor.seconds()
        for number in range(before + 1, self.video.complete_through + 1):
            received = self._last_receipt.pop(number, None)
            if received is not None:
                lag = now - received
                self.m_lag.observe(lag)
                self.lags.append(lag)
                del self.lags[:-1000]
        if self.video.complete_through > before:
            if self.video.complete_through % 10 == 0:
                self._write_state()
            if self.on_progress is not None:
                self.on_progress()

    def _write_state(self) -> None:
        if self.archive is not None:
            self.archive.write(self.video.stream, ("state.json",), self.video.state().to_json().encode())
