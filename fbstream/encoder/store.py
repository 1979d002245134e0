"""
What the encoder keeps of each live video, on the reactor thread: its
renditions, the segments in the rolling window (complete ones, and the one
being made, which grows chunk by chunk and can be streamed while it grows),
and the archive on disk that outlives the broadcast and the process.
"""

from __future__ import annotations

import enum
import json
import os
import shutil
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from fbstream.encoder import fmp4
from fbstream.encoder import metrics as em
from fbstream.encoder.transcode import SEGMENT_MS, RenditionInfo, SegmentClock
from fbstream.endings import Ending
from fbstream.httpbody import IGrowingBody
from fbstream.reactors import IReactorTimeFromThreads


class Change(enum.Enum):
    """What changed in a :class:`LiveVideo` (see :meth:`LiveVideo.watch`)."""

    #: A chunk was cut: the segment grew by a part, its playlist changed.
    CHUNK = "chunk"
    #: A segment is complete.
    SEGMENT = "segment"
    #: A rendition's init segment (its number is the period's index).
    INIT = "init"
    #: A period began or ended (the broadcaster left or came back).
    PERIOD = "period"
    #: The broadcast is over.
    END = "end"


@implementer(IGrowingBody)
class Segment:
    """One segment of one rendition; grows until ``complete``."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.chunks: list[bytes] = []
        #: How long each chunk plays, in its track's timescale (an LL-HLS part's duration).
        self.ticks: list[int] = []
        self.size = 0
        self.complete = False
        self.failed = False
        self.start_ms = (number - 1) * SEGMENT_MS
        self.duration_ms = SEGMENT_MS
        self._listeners: list[Callable[[Segment], None]] = []

    def data(self) -> bytes:
        return b"".join(self.chunks)

    def append(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        try:
            self.ticks.append(fmp4.duration(chunk))
        except fmp4.BoxError:
            self.ticks.append(0)
        self.size += len(chunk)
        self._notify()

    def finish(self, start_ms: int, duration_ms: int) -> None:
        self.start_ms = start_ms
        self.duration_ms = duration_ms
        self.complete = True
        self._notify()

    def fail(self) -> None:
        """The stream died while this segment was growing: it will never complete."""
        self.failed = True
        self._notify()

    def listen(self, callback: Callable[[Segment], None]) -> None:
        """Call ``callback`` on every change (a chunk, completion, failure)."""
        self._listeners.append(callback)

    def unlisten(self, callback: Callable[[Segment], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def _notify(self) -> None:
        for callback in list(self._listeners):
            callback(self)
        if self.complete or self.failed:
            self._listeners = []


class Rendition:
    def __init__(self, info: RenditionInfo, init: bytes | None) -> None:
        self.info = info
        #: The init segment of each period that has one in memory (others are
        #: only in the archive).
        self.inits: dict[int, bytes] = {0: init} if init is not None else {}
        #: The media timescale of its track (the init segment's ``mdhd``).
        self.timescale = info.timescale
        self.segments: dict[int, Segment] = {}
        #: Number -> (start_ms, duration_ms) of every complete segment, archived
        #: too, in the order they were made (which is the numbers' order).
        self.history: dict[int, tuple[int, int]] = {}
        #: The highest number in ``history`` (0: none): kept, never searched for.
        self.newest = 0

    def recent(self, count: int) -> list[int]:
        """The ``count`` highest numbers of ``history``, in order, in time independent of its length."""
        tail: list[int] = []
        for number in reversed(self.history):
            tail.append(number)
            if len(tail) >= count + 8:  # a little slack for any made out of order
                break
        return sorted(tail)[-count:] if count else []

    def segment(self, number: int) -> Segment:
        seg = self.segments.get(number)
        if seg is None:
            seg = self.segments[number] = Segment(number)
        return seg


@attrs.define
class Period:
    """
    One unbroken run of a broadcast: a publish, until the broadcaster drops.
    Segment numbers go on across periods. A period starts ``start_ms`` after
    the availability start, where the last one's content ended: periods are
    contiguous, and the time the broadcaster was away opens the next period
    as a slate (see :class:`~fbstream.encoder.transcode.Transcoder`), so no
    player falls into a gap between periods (dash.js stalls in one). Its
    media time starts at ``base_ms``, which for every period we make is
    ``start_ms``: media time is presentation time across the whole video,
    and a player switching periods never has to move its timestamp offset
    (dash.js, prebuffering the next period, does not).
    """

    index: int
    start_ms: int
    first_number: int
    #: Media time of the end of its last segment once the period is over.
    end_ms: int | None = None
    #: Media time at the start of segment ``first_number``. Records written
    #: before it was kept had ``(first_number - 1)`` seconds.
    base_ms: int = attrs.field()

    @base_ms.default
    def _legacy_base(self) -> int:
        return (self.first_number - 1) * SEGMENT_MS

    @classmethod
    def after(cls, last: Period, first_number: int) -> Period:
        """The period following ``last``, from the end of its content."""
        assert last.end_ms is not None
        start = last.start_ms + (last.end_ms - last.base_ms)
        return cls(last.index + 1, start, first_number, base_ms=start)

    @property
    def clock(self) -> SegmentClock:
        return SegmentClock(self.first_number, self.base_ms)

    @property
    def content_ms(self) -> int:
        """Its media, ms (what is made so far, for a period still going on)."""
        return (self.end_ms if self.end_ms is not None else self.base_ms) - self.base_ms

    @property
    def ends_at_ms(self) -> int:
        """Where its media ends, ms after the availability start: the end of the video, for its last period."""
        return self.start_ms + self.content_ms

    def init_name(self) -> str:
        return "init.mp4" if self.index == 0 else "init-%d.mp4" % (self.index,)


@attrs.define
class ArchiveState:
    """What ``state.json`` of an archived video holds."""

    stream: str
    availability_start: float
    ended: bool
    renditions: list[dict[str, Any]]
    segments: dict[str, dict[str, list[int]]]  # rendition -> {number: [start, duration]}
    periods: list[dict[str, Any]] = attrs.Factory(list)

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ArchiveState:
        return cls(**json.loads(text))


class LiveVideo:
    """One broadcast: live while its publisher is, then an archived replay."""

    log = Logger()

    def __init__(
        self,
        stream: str,
        availability_start: float,
        window_seconds: float,
        archive_dir: str | None,
        clock: IReactorTime,
    ) -> None:
        self.stream = stream
        self.availability_start = availability_start
        self.window_seconds = window_seconds
        self.archive_dir = archive_dir
        #: The clock that stamps each change (``publish_time``).
        self.clock = clock
        self.renditions: dict[str, Rendition] = {}
        self.ended = False
        #: Why it ended, once it has.
        self.ending: Ending | None = None
        #: When the manifests last changed (their ``publishTime``).
        self.publish_time = availability_start
        self.failure: str | None = None
        #: Highest segment number complete in every rendition.
        self.complete_through = 0
        self.periods: list[Period] = [Period(0, 0, 1)]
        #: No publisher now, but the broadcaster may come back (grace period).
        self.interrupted = False
        self._waiting: dict[tuple[str, int], list[Callable[[Segment | None], None]]] = {}
        #: Rendition -> callbacks waiting for a part of it (see when_part).
        self._part_waiting: dict[str, list[tuple[int, int | None, Callable[[], None]]]] = {}
        #: Told of every change a viewer could see (see :meth:`watch`).
        self._watchers: list[Callable[[Change, str | None, int], None]] = []

    def watch(self, watcher: Callable[[Change, str | None, int], None]) -> None:
        """
        Call ``watcher(change, rendition, number)`` on every change of what
        the video serves: a chunk cut (``number``'s segment grew by a part),
        a segment complete, an init segment, a period begun or ended, the
        end. (The push channel offers each new version from here.)
        """
        self._watchers.append(watcher)

    def unwatch(self, watcher: Callable[[Change, str | None, int], None]) -> None:
        if watcher in self._watchers:
            self._watchers.remove(watcher)

    def _changed(self, change: Change, name: str | None = None, number: int = 0) -> None:
        for watcher in list(self._watchers):
            watcher(change, name, number)

    # Fed by the stream's worker (on the reactor thread) -------------------

    def add_rendition(self, info: RenditionInfo, init: bytes) -> Rendition:
        """The init segment of a rendition in the current period."""
        period = self.periods[-1].index
        rendition = self.renditions.get(info.name)
        if rendition is None:
            rendition = self.renditions[info.name] = Rendition(info, None)
        rendition.inits[period] = init
        try:
            rendition.timescale = fmp4.timescale(init)
        except fmp4.BoxError:
            pass
        self.publish_time = self.clock.seconds()
        self._changed(Change.INIT, info.name, period)
        return rendition

    # Periods -------------------------------------------------------------

    def next_number(self) -> int:
        """The number the next period starts at: one past every segment made."""
        made = [n for r in self.renditions.values() for n in (*r.history, *r.segments)]
        return max(made, default=self.periods[-1].first_number - 1) + 1

    def close_period(self) -> None:
        """The publisher went away: the current period ends with its content."""
        if self.ended:
            return  # the end closed it; an ended video is never interrupted again
        period = self.periods[-1]
        ends = [
            sum(r.history[n]) for r in self.renditions.values() for n in r.history if n >= period.first_number
        ]
        period.end_ms = max(ends, default=period.base_ms)
        for rendition in self.renditions.values():
            for seg in rendition.segments.values():
                if not seg.complete and not seg.failed:
                    seg.fail()
        self.interrupted = True
        self.publish_time = self.clock.seconds()
        self._changed(Change.PERIOD)

    def _made_in(self, period: Period) -> bool:
        return any(n >= period.first_number for r in self.renditions.values() for n in r.history)

    def open_period(self, now: float) -> Period:
        """A publisher came back: a new period where the last one's content ended, numbers going on."""
        last = self.periods[-1]
        if last.end_ms is None:
            self.close_period()
        if not self._made_in(last):
            # Nothing came of the last period: it is replaced.
            self.periods.pop()
            if not self.periods:
                # Nothing at all yet (no manifest was published): start afresh.
                self.availability_start = now
                self.periods.append(Period(0, 0, 1))
                self.interrupted = False
                return self.periods[0]
            last = self.periods[-1]
        period = Period.after(last, self.next_number())
        self.periods.append(period)
        self.interrupted = False
        self.publish_time = self.clock.seconds()
        self._changed(Change.PERIOD)
        return period

    def period_of(self, number: int) -> Period:
        for period in reversed(self.periods):
            if number >= period.first_number:
                return period
        return self.periods[0]

    def chunk(self, name: str, number: int, data: bytes) -> None:
        rendition = self.renditions.get(name)
        if rendition is not None:
            seg = rendition.segment(number)
            seg.append(data)
            for callback in self._waiting.pop((name, number), []):
                callback(seg)
            self._parts_changed(rendition)
            self._changed(Change.CHUNK, name, number)

    def has_part(self, name: str, number: int, part: int | None) -> bool:
        """
        Whether rendition ``name`` has part ``part`` of segment ``number``
        (its chunk, 0-based), or the whole segment if ``part`` is None. A
        complete segment has every part it will ever have.
        """
        rendition = self.renditions.get(name)
        if rendition is None:
            return False
        seg = rendition.segments.get(number)
        if seg is None:
            return number in rendition.history
        return seg.complete or (part is not None and len(seg.chunks) > part)

    def when_part(self, name: str, number: int, part: int | None, callback: Callable[[], None]) -> Callable[[], None]:
        """
        Call ``callback`` once :meth:`has_part` holds (or the broadcast ends);
        returns a canceller. What LL-HLS blocking playlist reloads and part
        requests wait on.
        """
        entry = (number, part, callback)
        waiters = self._part_waiting.setdefault(name, [])
        waiters.append(entry)

        def cancel() -> None:
            if entry in waiters:
                waiters.remove(entry)

        return cancel

    def _parts_changed(self, rendition: Rendition) -> None:
        waiters = self._part_waiting.get(rendition.info.name)
        if not waiters:
            return
        ready = [w for w in waiters if self.has_part(rendition.info.name, w[0], w[1])]
        for entry in ready:
            waiters.remove(entry)
        for _, _, callback in ready:
            callback()

    def when_started(self, name: str, number: int, callback: Callable[[Segment | None], None]) -> Callable[[], None]:
        """
        Call ``callback`` with segment ``number`` once its first chunk exists
        (or with ``None`` if the broadcast ends first); returns a canceller.
        """
        key = (name, number)
        self._waiting.setdefault(key, []).append(callback)

        def cancel() -> None:
            waiters = self._waiting.get(key, [])
            if callback in waiters:
                waiters.remove(callback)

        return cancel

    def segment_end(self, name: str, number: int, start_ms: int, duration_ms: int) -> Segment | None:
        rendition = self.renditions.get(name)
        if rendition is None:
            return None
        seg = rendition.segment(number)
        seg.finish(start_ms, duration_ms)
        rendition.history[number] = (start_ms, duration_ms)
        rendition.newest = max(rendition.newest, number)
        self._trim(rendition)
        self._parts_changed(rendition)
        everywhere = min(r.newest for r in self.renditions.values())
        if everywhere > self.complete_through:
            self.complete_through = everywhere
            self.publish_time = self.clock.seconds()
        self._changed(Change.SEGMENT, name, number)
        return seg

    def _trim(self, rendition: Rendition) -> None:
        """Keep only the window (and the segment being made) in memory."""
        keep = int(self.window_seconds * 1000 // SEGMENT_MS) + 2
        if len(rendition.segments) > keep:
            for number in sorted(rendition.segments)[:-keep]:
                seg = rendition.segments[number]
                if seg.complete or seg.failed:
                    del rendition.segments[number]

    def end(self, ending: Ending) -> None:
        if self.periods[-1].end_ms is None:
            self.close_period()
        self.interrupted = False
        self.ended = True
        self.ending = ending
        self.publish_time = self.clock.seconds()
        em.forget(self.stream, self.renditions)
        for rendition in self.renditions.values():
            for seg in rendition.segments.values():
                if not seg.complete:
                    seg.fail()
        waiting, self._waiting = self._waiting, {}
        for callbacks in waiting.values():
            for callback in callbacks:
                callback(None)
        parts, self._part_waiting = self._part_waiting, {}
        for entries in parts.values():
            for _, _, part_callback in entries:
                part_callback()
        self._changed(Change.END)

    # Read by the web resources -------------------------------------------

    def live_edge(self) -> int:
        """The newest segment number any rendition has started."""
        return max((max(r.segments) for r in self.renditions.values() if r.segments), default=0)

    def due(self, now: float) -> int:
        """
        The newest segment number the manifest's timing lets a player ask
        for at ``now`` (0 once the broadcast is over): what players go by,
        however far behind the encoder is.
        """
        if self.ended:
            return 0
        period = self.periods[-1]
        media_ms = int((now - self.availability_start) * 1000) - period.start_ms + period.base_ms
        return period.clock.number_at(media_ms)

    def state(self) -> ArchiveState:
        """
        What ``state.json`` holds: everything but the segments' history,
        which grows with the broadcast and is appended a line per segment to
        ``segments.jsonl`` instead (:func:`history_line`), so writing the
        state costs the same at any length.
        """
        return ArchiveState(
            self.stream,
            self.availability_start,
            self.ended,
            [attrs.asdict(r.info) for r in self.renditions.values()],
            {},
            [attrs.asdict(p) for p in self.periods],
        )


class Archive:
    """
    Segments on disk: ``<dir>/<stream>/<rendition>/{init.mp4,<n>.m4s}`` and
    ``<dir>/<stream>/state.json``, every file written to a temporary name and
    renamed, in a thread pool.
    """

    log = Logger()

    def __init__(self, directory: str, pool: ThreadPool, reactor: IReactorTimeFromThreads) -> None:
        self.directory = directory
        self.pool = pool
        self.reactor = reactor

    def path(self, stream: str, *parts: str) -> str:
        return os.path.join(self.directory, stream, *parts)

    def run(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """``f(*args)`` on the archive's thread, after every write and append asked for before."""
        return deferToThreadPool(self.reactor, self.pool, f, *args)

    #: Seconds before each retry of a write the system refused (out of file
    #: descriptors, a full disk that is being cleared): a few seconds in all.
    RETRY_DELAYS = (0.5, 1.0, 2.0)

    def write(self, stream: str, relative: tuple[str, ...], data: bytes) -> Deferred[bool]:
        """
        Write a file of the archive; fires True once it is, or False once it
        is given up as lost (retried on an OS error, then logged and counted).
        Never fails: a lost file of the replay must not stop the live video.
        """
        return self._retrying(_write_atomically, self.path(stream, *relative), data)

    def _retrying(self, f: Callable[[str, bytes], None], path: str, data: bytes) -> Deferred[bool]:
        done: Deferred[bool] = Deferred()

        def attempt(n: int) -> None:
            self.run(f, path, data).addCallbacks(lambda _: done.callback(True), failed, errbackArgs=(n,))

        def failed(failure: Any, n: int) -> None:
            if failure.check(OSError) and n < len(self.RETRY_DELAYS):
                self.reactor.callLater(self.RETRY_DELAYS[n], attempt, n + 1)
                return
            em.ARCHIVE_LOST.inc()
            self.log.error("archive: {path} is lost ({n} tries): {e}", path=path, n=n + 1,
                           e=failure.getErrorMessage())
            done.callback(False)

        attempt(0)
        return done

    def append(self, stream: str, relative: tuple[str, ...], data: bytes) -> Deferred[bool]:
        """Append to a file of the archive, with :meth:`write`'s retries and loss accounting."""
        return self._retrying(_append, self.path(stream, *relative), data)

    def read(self, stream: str, relative: tuple[str, ...]) -> Deferred[bytes | None]:
        return self.run(_read_or_none, self.path(stream, *relative))

    def start(self, stream: str) -> Deferred[None]:
        """Make room for a new broadcast of ``stream`` (an old one is kept aside, named by the time now)."""
        return self.run(_set_aside, self.path(stream), self.reactor.seconds())

    def load_all(self) -> list[ArchiveState]:
        """Every archived video (at startup, before the reactor runs)."""
        states: list[ArchiveState] = []
        if not os.path.isdir(self.directory):
            return states
        for name in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, name, "state.json")
            try:
                with open(path) as f:
                    state = ArchiveState.from_json(f.read())
            except (OSError, ValueError, TypeError):
                continue
            _read_history(os.path.join(self.directory, name, HISTORY), state.segments)
            states.append(state)
        return states

    def expire(self, retention_seconds: float, now: float) -> Deferred[list[str]]:
        return self.run(_expire, self.directory, retention_seconds, now)


def _write_atomically(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


#: The segments' history of an archived video, a JSON line per segment.
HISTORY = "segments.jsonl"


def history_line(rendition: str, number: int, start_ms: int, duration_ms: int) -> bytes:
    return json.dumps([rendition, number, start_ms, duration_ms]).encode() + b"\n"


def _read_history(path: str, segments: dict[str, dict[str, list[int]]]) -> None:
    """Add the lines of ``path`` to ``segments`` (a torn last line, from a crash, is skipped)."""
    try:
        with open(path, "rb") as f:
            for line in f:
                try:
                    rendition, number, start_ms, duration_ms = json.loads(line)
                    segments.setdefault(str(rendition), {})[str(int(number))] = [int(start_ms), int(duration_ms)]
                except (ValueError, TypeError):
                    continue
    except FileNotFoundError:
        pass


def _append(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "ab") as f:
        f.write(data)


def _read_or_none(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _set_aside(path: str, now: float) -> None:
    if os.path.isdir(path):
        os.replace(path, "%s.%d" % (path, int(now * 1000)))


def _expire(directory: str, retention_seconds: float, now: float) -> list[str]:
    gone: list[str] = []
    if not os.path.isdir(directory):
        return gone
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        try:
            age = now - os.path.getmtime(path)
        except OSError:
            continue
        if os.path.isdir(path) and age > retention_seconds:
            shutil.rmtree(path, ignore_errors=True)
            gone.append(name)
    return gone
