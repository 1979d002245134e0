"""
The comments and reactions of the videos this encoder serves (the timed
track of :mod:`fbstream.live.comments`), kept for the replay.

While a video is live its track is in memory (its last two minutes). Once a
second is over, its document, if anyone posted in it, is appended to the
video's archive (``comments.jsonl``, a document per line); when the video
ends the rest follow at once (posts are refused from then on), and the track
leaves memory.

A replay's seconds are read back from there. The file is scanned once for
where each second's line is (the index of the :data:`MAX_REPLAYS` videos
last asked for is kept), and each document is read on the archive's thread.
That thread is the one every append goes through, in order, so a read
asked for after the end comes after the last second's append. A second of
the replay nobody posted in is an empty document.

Without an archive there is no replay of the comments: an ended video's
track stays in memory while the registry keeps the video, and serves what
it kept (the last two minutes).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from fbstream.encoder.store import Archive, Change, LiveVideo
from fbstream.live.comments import SECOND_OF, Track, empty_document

if TYPE_CHECKING:
    from fbstream.encoder.web import VideoRegistry

#: A video's comments in its archive, a document per line.
COMMENTS_FILE = "comments.jsonl"
#: The replays whose index of seconds is kept (the least recently asked forgotten first).
MAX_REPLAYS = 64
#: Where each second's document is in the file: {second: (offset, length)}.
Index = dict[int, tuple[int, int]]


def index_of(path: str) -> Index:
    """
    Where each second's line of ``path`` is (on a thread: it reads the
    file). A line that does not start as a document does (a torn last line
    after a crash) is skipped; the last line of a second wins.
    """
    index: Index = {}
    offset = 0
    try:
        with open(path, "rb") as f:
            for line in f:
                match = SECOND_OF.match(line)
                if match is not None and line.endswith(b"\n"):
                    index[int(match.group(1))] = (offset, len(line) - 1)
                offset += len(line)
    except FileNotFoundError:
        pass
    return index


def read_at(path: str, offset: int, length: int) -> bytes | None:
    """``length`` bytes of ``path`` from ``offset`` (on a thread); None if the file is gone or short."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(length)
    except FileNotFoundError:
        return None
    return data if len(data) == length else None


class Chat(MultiService):
    """Every video's comments track; the finished seconds appended to its archive each ``interval``."""

    log = Logger()

    def __init__(self, registry: VideoRegistry, archive: Archive | None, clock: IReactorTime,
                 interval: float = 1.0) -> None:
        super().__init__()
        self.registry = registry
        self.archive = archive
        self.clock = clock
        #: Each video's track (one per video the registry holds: it bounds them).
        self.tracks: dict[str, Track] = {}
        #: The replays' indexes (or, while one is read, who waits for it), the most recently asked last.
        #: Keyed by the video's stream and start: a stream broadcast again is another video.
        self.replays: OrderedDict[tuple[str, float], Index | list[Deferred[Index]]] = OrderedDict()
        timer = TimerService(interval, self.flush)
        timer.clock = clock
        timer.setServiceParent(self)

    def track(self, video: LiveVideo) -> Track:
        """``video``'s track, started on its first post."""
        track = self.tracks.get(video.stream)
        if track is None:
            for gone in [s for s in self.tracks if self.registry.get(s) is None]:
                del self.tracks[gone]
            track = self.tracks[video.stream] = Track()

            def ended(change: Change, _name: str | None, _number: int) -> None:
                if change is Change.END:
                    video.unwatch(ended)
                    self._ended(video.stream, track)

            video.watch(ended)
        return track

    def kept(self, stream: str) -> Track | None:
        """The track in memory of ``stream``, if it has one."""
        return self.tracks.get(stream)

    def flush(self) -> None:
        """Append the seconds now over to each live video's archive."""
        now = self.clock.seconds()
        for stream, track in list(self.tracks.items()):
            if self.registry.get(stream) is None:
                del self.tracks[stream]
                continue
            self._append(stream, track.finished(now))

    def _ended(self, stream: str, track: Track) -> None:
        # Posts are refused from now on: every second is final.
        self._append(stream, track.finished(math.inf, everything=True))
        if self.archive is not None and self.tracks.get(stream) is track:
            del self.tracks[stream]

    def _append(self, stream: str, documents: list[tuple[int, bytes]]) -> None:
        if self.archive is None or not documents:
            return
        self.archive.append(stream, (COMMENTS_FILE,), b"".join(doc + b"\n" for _, doc in documents))
        # An index read before this append lacks its seconds.
        for key in [key for key in self.replays if key[0] == stream]:
            del self.replays[key]

    # The replay

    def replay(self, video: LiveVideo, n: int) -> Deferred[bytes | None]:
        """
        Second ``n``'s document of the ended ``video``, from its archive:
        empty if nobody posted in it, None if ``n`` is outside the video.
        """
        archive = self.archive
        assert archive is not None
        path = archive.path(video.stream, COMMENTS_FILE)
        first = math.floor(video.availability_start) - 1
        last = math.ceil(video.availability_start + video.periods[-1].ends_at_ms / 1000) + 2

        def found(seconds: Index) -> Deferred[bytes | None]:
            where = seconds.get(n)
            if where is not None:
                return archive.run(read_at, path, *where)
            return succeed(empty_document(n) if first <= n <= max(last, max(seconds, default=last)) else None)

        return self._index((video.stream, video.availability_start), path).addCallback(found)

    def _index(self, key: tuple[str, float], path: str) -> Deferred[Index]:
        """The index of the replay ``key`` names: read once, however many ask while it is read."""
        assert self.archive is not None
        known = self.replays.pop(key, None)
        if known is None:
            waiting: list[Deferred[Index]] = []
            known = waiting

            def loaded(index: Index) -> None:
                if self.replays.get(key) is waiting:
                    self.replays[key] = index
                for d in waiting:
                    d.callback(index)

            def failed(failure: Any) -> None:
                if self.replays.get(key) is waiting:
                    del self.replays[key]
                for d in waiting:
                    d.errback(failure)

            self.archive.run(index_of, path).addCallbacks(loaded, failed)
        self.replays[key] = known
        while len(self.replays) > MAX_REPLAYS:
            self.replays.popitem(last=False)
        if isinstance(known, dict):
            return succeed(known)
        mine: Deferred[Index] = Deferred()
        known.append(mine)
        return mine
