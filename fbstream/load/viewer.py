"""
A simulated live viewer, as a DASH player behaves, without a byte of media
decoded: sans-IO, so that one process can run thousands (the agent gives it
the time and the answers to its requests, and makes the requests it asks
for, one at a time on one kept-alive connection).

What it does, in order:

- it reads the manifest, and again once the copy it has is older than its
  ``Cache-Control`` allows and its ``minimumUpdatePeriod`` is over;
- it fetches each track's init segment (again when it changes rendition);
- it starts ``startup`` seconds behind the newest complete segment, and
  then fetches one segment per track per segment duration, each as soon as
  it is complete (a player at the live edge without low-latency mode);
- it plays once ``startup`` seconds are buffered, drains the buffer in real
  time, stalls when it is empty and plays on once ``resume`` seconds are
  buffered again;
- it picks the video rendition by the throughput it measures on each
  segment (the slower of a fast and a slow moving average, 80 % of it).

Each viewer keeps its own figures (:class:`Figures`); the agent adds them up.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import attrs

from fbstream.load.mpd import Manifest, ManifestError, parse

MANIFEST, INIT, MEDIA = "manifest", "init", "media"


@attrs.frozen
class Settings:
    #: Seconds buffered before the picture starts, and after a stall.
    startup: float = 2.0
    resume: float = 1.0
    #: The share of the measured throughput a rendition may take.
    fits: float = 0.8
    #: Seconds to wait before asking again after an error (a "not yet" included).
    retry: float = 0.25
    #: How late after a segment's end a viewer asks for it: up to this, at random.
    jitter: float = 0.05


@attrs.frozen
class Request:
    path: str
    kind: str
    track: int = -1
    number: int = 0
    rendition: str = ""


@attrs.define
class Figures:
    """One viewer's experience so far."""

    startup: float | None = None
    stalls: int = 0
    stalled: float = 0.0
    played: float = 0.0
    requests: int = 0
    errors: dict[str, int] = attrs.Factory(dict)
    #: Seconds of media played per video rendition.
    renditions: dict[str, float] = attrs.Factory(dict)


class Viewer:
    """
    :param base: the manifest's directory, ending in ``/`` (segment URLs
        are relative to it).
    :param observe: called with (kind, seconds) for every time to first
        byte, and ("latency", seconds) for each live-latency sample.
    """

    def __init__(self, base: str, manifest: str, settings: Settings, rng: random.Random,
                 observe: Callable[[str, float], None] = lambda kind, value: None) -> None:
        self.base = base
        self.manifest_name = manifest
        self.settings = settings
        self.rng = rng
        self.observe = observe
        self.figures = Figures()
        self.manifest: Manifest | None = None
        self.expires = 0.0
        self.ended = False
        #: Per track: the rendition fetched now, and whether its init segment is still to fetch.
        self.rendition: list[int] = []
        self.needs_init: list[bool] = []
        #: The next segment number to fetch, and the track of it to fetch next.
        self.number = 0
        self.track = 0
        #: Media seconds (from the manifest's origin) fetched in every track, and played.
        self.fetched = 0.0
        self.playhead = 0.0
        self.playing = False
        self.stalled_since: float | None = None
        self.started_at = 0.0
        self.clock = 0.0
        #: Throughput, bits/s: a fast and a slow moving average of each video segment's.
        self.fast = self.slow = 0.0
        self.gone = False

    # What to do next -------------------------------------------------------------

    def start(self, now: float) -> Request:
        self.started_at = self.clock = now
        return self._manifest_request()

    def next(self, now: float) -> Request | float:
        """The next request, or when to ask again (a Unix time): nothing is due yet."""
        if self.ended:
            return float("inf")
        if self.manifest is None or now >= self.expires:
            return self._manifest_request()
        manifest = self.manifest
        for index, track in enumerate(manifest.tracks):
            if self.needs_init[index]:
                rendition = track.renditions[self.rendition[index]]
                return Request(self.base + rendition.init(track), INIT, index, 0, rendition.id)
        track = manifest.tracks[self.track]
        due = manifest.end_of(track, self.number)
        if now < due:
            return min(self.expires, due + self.rng.random() * self.settings.jitter)
        rendition = track.renditions[self.rendition[self.track]]
        return Request(self.base + rendition.media(track, self.number), MEDIA, self.track, self.number, rendition.id)

    def _manifest_request(self) -> Request:
        return Request(self.base + self.manifest_name, MANIFEST)

    # What came back -------------------------------------------------------------

    def answered(self, now: float, request: Request, status: int, size: int, seconds: float, ttfb: float,
                 body: bytes | None = None, max_age: float = 1.0) -> Request | float:
        """A request's answer: its status, body size, time to its last byte and to its first."""
        self.figures.requests += 1
        self.observe(request.kind, ttfb)
        if status != 200:
            return self._error(now, str(status))
        if request.kind == MANIFEST:
            try:
                manifest = parse(body or b"")
            except ManifestError:
                return self._error(now, "manifest")
            self._read(now, manifest, max_age)
        elif request.kind == INIT:
            self.needs_init[request.track] = False
        elif request.kind == MEDIA and self.manifest is not None and request.number == self.number:
            if self.manifest.tracks[request.track].kind == "video" and seconds > 0:
                self._measured(size * 8 / seconds)
            self.track += 1
            if self.track >= len(self.manifest.tracks):
                self.track = 0
                self.fetched = self.manifest.end_of(self.manifest.tracks[0], self.number) - self.manifest.origin
                self.number += 1
        self.update(now)
        return self.next(now)

    def failed(self, now: float, request: Request) -> float:
        """The request got no answer (the connection failed): when to try again."""
        self.figures.requests += 1
        return self._error(now, "connection")

    def _error(self, now: float, what: str) -> float:
        self.figures.errors[what] = self.figures.errors.get(what, 0) + 1
        self.update(now)
        return now + self.settings.retry

    def _read(self, now: float, manifest: Manifest, max_age: float) -> None:
        # Read again once the copy is stale and the manifest's own update
        # period is over, as dash.js does (never more than twice a second).
        self.expires = now + max(0.5, max_age, manifest.update_period)
        first = self.manifest is None
        self.manifest = manifest
        if not manifest.dynamic:
            self.ended = True  # the broadcast is over: the viewer leaves
            return
        if first:
            self.rendition = [0] * len(manifest.tracks)
            self.needs_init = [True] * len(manifest.tracks)
            track = manifest.tracks[0]
            behind = max(1, round(self.settings.startup / track.seconds))
            self.number = max(track.start_number, manifest.newest_complete(track, now) - behind + 1)
            self.playhead = self.fetched = manifest.start_of(track, self.number) - manifest.origin

    def _measured(self, bits_per_second: float) -> None:
        if self.fast == 0.0:
            self.fast = self.slow = bits_per_second
        else:
            self.fast += 0.5 * (bits_per_second - self.fast)
            self.slow += 0.1 * (bits_per_second - self.slow)
        assert self.manifest is not None
        for index, track in enumerate(self.manifest.tracks):
            if track.kind != "video":
                continue
            budget = self.settings.fits * min(self.fast, self.slow)
            chosen = 0
            for i, rendition in enumerate(track.renditions):
                if rendition.bandwidth <= budget:
                    chosen = i
            if chosen != self.rendition[index]:
                self.rendition[index] = chosen
                self.needs_init[index] = True

    # The picture ---------------------------------------------------------------

    def leave(self, now: float) -> None:
        """The viewer stops watching at ``now``: its figures are final (a stall going on ends here)."""
        self.update(now)
        if self.stalled_since is not None:
            self.figures.stalled += now - self.stalled_since
            self.stalled_since = None
        self.gone = True

    def update(self, now: float) -> None:
        """Play the buffer up to ``now``: start, stall and resume as it allows."""
        if self.gone:
            return
        elapsed, self.clock = max(0.0, now - self.clock), now
        figures = self.figures
        if self.playing:
            ahead = self.fetched - self.playhead
            played = min(elapsed, ahead)
            self.playhead += played
            figures.played += played
            if self.manifest is not None and self.manifest.tracks:
                video = self.manifest.tracks[0]
                name = video.renditions[min(self.rendition[0], len(video.renditions) - 1)].id
                figures.renditions[name] = figures.renditions.get(name, 0.0) + played
            if elapsed > ahead:
                self.playing = False
                self.stalled_since = now - (elapsed - ahead)
                figures.stalls += 1
        if not self.playing and self.manifest is not None and not self.ended:
            needed = self.settings.startup if figures.startup is None else self.settings.resume
            if self.fetched - self.playhead >= needed - 1e-9:
                self.playing = True
                if figures.startup is None:
                    figures.startup = now - self.started_at
                if self.stalled_since is not None:
                    figures.stalled += now - self.stalled_since
                    self.stalled_since = None
        if self.playing and self.manifest is not None:
            self.observe("latency", now - (self.manifest.origin + self.playhead))

    def stalled_now(self, now: float) -> float:
        """Seconds of the stall going on at ``now`` (0: none), not yet counted in the figures."""
        return now - self.stalled_since if self.stalled_since is not None else 0.0
