"""
The upload's bitrate, fitted to what the network takes (sans-IO).

The broadcaster asks the server for an acknowledgement every few KB
(:func:`ack_window`), so it knows at any moment how much of what it sent has
arrived: ``sent - acknowledged`` is its queue, everything on its way
(Twisted's buffer, the kernel's, the link's), and the acknowledgements per
second are what the link carries. :class:`UploadRate` reads both four times
a second and moves the video bitrate:

- **down, fast**, when the queue delays what is sent by more than
  :data:`QUEUE_HIGH`: to what was acknowledged over the last
  :data:`RATE_WINDOW`, less a margin, less the audio, less what drains the
  queue within :data:`DRAIN` seconds (at most a fifth of the link);
- **up, slowly**, by :data:`STEP_UP` after :data:`CLEAN_FOR` seconds with a
  queue under :data:`QUEUE_LOW` and not growing; near the rate where the link last ran out (its ceiling) by
  :data:`MIN_STEP_UP` only, after :data:`CLEAN_NEAR_CEILING` seconds;
- **never below the floor**: what would go under it sends audio alone, and
  video comes back at the floor after a longer clean spell.

Every change is meant to start at a keyframe (the encoder forces one).

OBS's dynamic bitrate (``plugins/obs-outputs/rtmp-stream.c``, ``dbr_*``) is
the reference; :class:`ObsDynamicBitrate` is its logic with its constants,
for the benchmark to run on the same link. Where this one differs:

- OBS estimates the rate from how fast ``send()`` returned, which includes
  the kernel's socket buffer: on a link narrower than the buffer drains,
  ``send()`` keeps returning quickly until the buffer is full, and the
  estimate runs high; and its trigger, 200 ms in its own packet queue, does
  not see that buffer either (at 1 Mbit/s, Linux's 512 KB is 4 s of delay
  before OBS notices). The server's acknowledgements count only what
  arrived, wherever the rest waits.
- OBS lowers to the estimate, rounded down to 100 kbit/s, and leaves the
  queue to drain by itself at whatever margin that leaves; here the drop
  also takes the queue away within :data:`DRAIN` seconds, so the latency
  the congestion added goes away with it.
- OBS climbs by a tenth of the configured bitrate each ``DBR_INC_TIMER``
  (4 s today, 30 s before); here by :data:`STEP_UP` of the current bitrate
  each :data:`CLEAN_FOR` seconds of clean queue: slow from a low rate,
  faster near the top, and only while the queue stays clean.
- OBS has no floor: its estimate stops at 50 kbit/s of video. Under the
  floor here the video stops and the audio goes on, as Facebook's client did.
"""

from __future__ import annotations

from collections import deque

import attrs

#: Bytes between the server's acknowledgements we ask for: small, so the
#: queue is known to a few tens of milliseconds, but no more than
#: :data:`ACKS_PER_SECOND` at the most we send (a peer's control messages
#: are limited: 50 a second, see :mod:`fbstream.rtmp.connection`).
LEAST_ACK_WINDOW = 4096
ACKS_PER_SECOND = 20
#: Seconds the queue delays what is sent (its bytes over the acknowledged
#: rate) that mean congestion.
QUEUE_HIGH = 0.5
#: Seconds of queue under which the link is taken as having room.
QUEUE_LOW = 0.15
#: Seconds of queue past which video is dropped until the next keyframe: the
#: viewers would otherwise see the broadcaster ever later.
QUEUE_DROP = 2.0
#: The share of the acknowledged rate a drop aims at.
MARGIN = 0.9
#: Seconds a drop aims to drain the queue in, taking at most this share of
#: the link for it.
DRAIN = 3.0
DRAIN_SHARE = 0.1
#: The least share of the bitrate one drop keeps.
MOST_CUT = 0.5
#: Seconds between two drops: the first takes that long to show in the
#: queue. A second drop also needs the queue not to be draining (under
#: :data:`DRAINING` of what it was at the first).
SETTLE = 1.0
DRAINING = 0.9
#: How much a step up adds, and at least (bit/s).
STEP_UP = 0.25
MIN_STEP_UP = 50_000
#: A queue under :data:`QUEUE_LOW` that grew by this many acknowledgement
#: windows since it was last at its shortest is not clean: a link full by a
#: little fills slowly, but steadily.
GROWING = 2
#: Seconds of clean queue before a step up, and before video comes back.
CLEAN_FOR = 1.0
VIDEO_BACK_AFTER = 5.0
#: Near the rate the link last ran out at (the ceiling: within this share of
#: it), steps up need :data:`CLEAN_NEAR_CEILING` seconds of clean queue and
#: start at :data:`MIN_STEP_UP`, each clean one twice the last: probing where
#: the link gave out before gently, but finding a link that grew soon.
NEAR_CEILING = 0.9
CLEAN_NEAR_CEILING = 2.0
#: ... but never more than this share of the ceiling at once. Carrying this
#: multiple of the ceiling with a clean queue, the link has grown: it is forgotten.
PROBE_SHARE = 0.05
GREW = 1.1
#: Seconds of acknowledgements the rates are measured over.
RATE_WINDOW = 0.75
#: Seconds a queue must have stood for the rate since to be the link's.
STANDING_FOR = 0.5
#: The least rate a queue's delay is reckoned at (bit/s): a stalled link's
#: queue is long, not infinite.
LEAST_RATE = 8_000


def ack_window(most: int) -> int:
    """The acknowledgement window for an upload of at most ``most`` bit/s."""
    return max(LEAST_ACK_WINDOW, most // 8 // ACKS_PER_SECOND)


@attrs.frozen
class Change:
    """A new video bitrate (0: audio alone), and why."""

    video: int
    reason: str


@attrs.define
class UploadRate:
    """
    The video bitrate for the link, from the bytes sent and acknowledged.

    :meth:`tick` takes the clock and both counters (bytes since the
    connection began, the same bytes the server counts) and returns a
    :class:`Change` when the bitrate should move.
    """

    maximum: int
    floor: int
    audio: int
    video: int = 0
    #: Bytes between the server's acknowledgements (see :func:`ack_window`).
    ack_window: int = 0
    #: (time, bytes sent, bytes acknowledged), over :data:`RATE_WINDOW` and one more.
    _samples: deque[tuple[float, int, int]] = attrs.field(factory=deque)
    _changed_at: float = -1e9
    _clean_since: float | None = None
    _clean_queued: float = 0.0
    #: What the link carried when it last ran out (bit/s; 0: never), and
    #: the queue then (bits).
    ceiling: float = 0.0
    _queued_at_drop: float = 0.0
    _probe: int = 0
    #: Since when a queue has stood (past :data:`QUEUE_LOW`; now: none does),
    #: and the bytes acknowledged then.
    _standing_since: float = 0.0
    _standing_acked: int = 0
    #: The link's rate (what was acknowledged) and the sending rate, last
    #: measured (bit/s), and the queue's delay (seconds).
    measured: float = 0.0
    sending: float = 0.0
    queue: float = 0.0

    def __attrs_post_init__(self) -> None:
        if not 0 < self.floor <= self.maximum:
            raise ValueError("the floor must be above 0 and at most the maximum")
        if not self.video:
            self.video = self.maximum
        if not self.ack_window:
            self.ack_window = ack_window(self.video + self.audio)

    def reset(self, now: float) -> None:
        """A new connection: its counters start again from 0."""
        self._samples.clear()
        self._clean_since = None
        self._changed_at = now
        self.queue = 0.0

    def tick(self, now: float, sent: int, acknowledged: int) -> Change | None:
        samples = self._samples
        samples.append((now, sent, acknowledged))
        while len(samples) > 2 and samples[1][0] <= now - RATE_WINDOW:
            samples.popleft()
        since, sent_then, acked_then = samples[0]
        span = now - since
        measured = span >= RATE_WINDOW * 0.5
        if measured:
            self.measured = (acknowledged - acked_then) * 8 / span
            self.sending = (sent - sent_then) * 8 / span
        queued = max(0, sent - acknowledged - self.ack_window) * 8
        window = self.window()
        if abs(window - self.ack_window) > self.ack_window // 4:
            # The caller asks the server for the new window (the bytes
            # acknowledged already keep counting the same).
            self.ack_window = window
        self.queue = queued / max(self.measured, LEAST_RATE)
        if self.queue <= QUEUE_LOW:
            self._standing_since, self._standing_acked = now, acknowledged
        elif now - self._standing_since >= STANDING_FOR:
            # A queue has stood since then: the link was full, and what it
            # carried since is its rate, from before any step of its rate
            # (a window of the last second could straddle one).
            self.ceiling = (acknowledged - self._standing_acked) * 8 / (now - self._standing_since)
        if self.queue > QUEUE_HIGH:
            self._clean_since = None
            if now - self._changed_at < SETTLE or not measured:
                return None
            if now - self._changed_at < 2 * SETTLE and queued < DRAINING * self._queued_at_drop:
                return None  # the last drop is working: wait for it
            if now - self._standing_since < STANDING_FOR:
                self.ceiling = self.measured
            self._queued_at_drop = queued
            self._probe = 0
            drain = min(queued / DRAIN, DRAIN_SHARE * self.measured)
            # At most halved at once: a loss's recovery can make the link
            # look far narrower than it is for a moment.
            video = max(MARGIN * self.measured - self.audio - drain, self.video * MOST_CUT)
            return self._set(now, video, "queue %.1f s, link %.0f kbit/s" % (self.queue, self.measured / 1000))
        if self.queue > QUEUE_LOW:
            self._clean_since = None
            return None
        if self._clean_since is None:
            self._clean_since, self._clean_queued = now, queued
        elif queued > self._clean_queued + GROWING * self.ack_window * 8:
            # Short, but growing: the link is full, if only just.
            self._clean_since, self._clean_queued = now, queued
            return None
        self._clean_queued = min(self._clean_queued, queued)
        clean = now - max(self._clean_since, self._changed_at)
        if self.video == 0:
            if clean >= VIDEO_BACK_AFTER:
                return self._set(now, self.floor, "room again: video back at the floor")
            return None
        if self.video >= self.maximum or clean < CLEAN_FOR:
            return None
        step = max(MIN_STEP_UP, STEP_UP * self.video)
        near = NEAR_CEILING * self.ceiling - self.audio  # the video bitrate where gentle probing starts
        if self.ceiling and self.video + step > near:
            if self.video < near - MIN_STEP_UP:
                step = near - self.video  # fast up to there, gently past it
            elif clean < CLEAN_NEAR_CEILING:
                return None
            else:
                step = max(MIN_STEP_UP, min(MIN_STEP_UP << min(self._probe, 4), PROBE_SHARE * self.ceiling))
                self._probe += 1
                if self.measured > GREW * self.ceiling:
                    # Clean while carrying well past where it ran out: the link has grown.
                    self.ceiling = 0.0
                    self._probe = 0
        return self._set(now, min(self.maximum, self.video + step), "probing up")

    def _set(self, now: float, video: float, reason: str) -> Change | None:
        chosen = 0 if video < self.floor else min(self.maximum, int(video) // 1000 * 1000)
        self._changed_at = now
        self._clean_since = None
        if chosen == self.video:
            return None
        self.video = chosen
        return Change(chosen, reason if chosen else reason + ": under the floor, audio alone")

    def window(self) -> int:
        """The acknowledgement window for the rate the link carries now (see :func:`ack_window`)."""
        return ack_window(int(max(self.measured, self.sending, self.floor + self.audio)))

    def should_drop(self) -> bool:
        """Whether the queue is so long that video should wait for the next keyframe."""
        return self.queue > QUEUE_DROP


#: OBS's constants (rtmp-stream.c).
OBS_TRIGGER = 0.2  # DBR_TRIGGER_USEC: buffered send time that lowers the bitrate
OBS_INC_TIMER = 4.0  # DBR_INC_TIMER (30 s before OBS 30)
OBS_MIN_ESTIMATE = 1.0  # MIN_ESTIMATE_DURATION_MS
OBS_MAX_ESTIMATE = 2.0  # MAX_ESTIMATE_DURATION_MS
OBS_LEAST_VIDEO = 50_000  # its estimate's least video bitrate


@attrs.define
class ObsDynamicBitrate:
    """
    OBS's dynamic bitrate on the same inputs, for comparison: its estimate is
    the bytes ``send()`` took over the last 1 to 2 s (``sent_by_socket``, which
    counts what the kernel's socket buffer took), less the audio; a send
    queue of 200 ms lowers the bitrate to the estimate (rounded down to
    100 kbit/s) or back to the one before the last increase; every
    ``DBR_INC_TIMER`` it climbs by a tenth of the configured bitrate.
    """

    maximum: int
    audio: int
    inc_timer: float = OBS_INC_TIMER
    video: int = 0
    previous: int = 0
    _sends: deque[tuple[float, int]] = attrs.field(factory=deque)
    _inc_at: float | None = None

    def __attrs_post_init__(self) -> None:
        if not self.video:
            self.video = self.maximum

    def tick(self, now: float, sent_by_socket: int, queued_seconds: float) -> Change | None:
        sends = self._sends
        sends.append((now, sent_by_socket))
        while len(sends) > 2 and now - sends[1][0] >= OBS_MAX_ESTIMATE:
            sends.popleft()
        span = now - sends[0][0]
        estimate = 0
        if span >= OBS_MIN_ESTIMATE:
            estimate = max(OBS_LEAST_VIDEO, int((sent_by_socket - sends[0][1]) * 8 / span) - self.audio)
        if queued_seconds >= OBS_TRIGGER:
            if estimate and estimate < self.video:
                sends.clear()
                new = max(OBS_LEAST_VIDEO, estimate // 100_000 * 100_000)
            elif self.previous:
                new = self.previous
            else:
                return None
            self.previous = 0
            self._inc_at = now + self.inc_timer
            if new == self.video:
                return None
            self.video = new
            return Change(new, "OBS: lowered")
        if self._inc_at is not None and now >= self._inc_at and self.video < self.maximum:
            self.previous = self.video
            self.video = min(self.maximum, self.video + self.maximum // 10)
            self._inc_at = now + self.inc_timer if self.video < self.maximum else None
            return Change(self.video, "OBS: raised")
        return None
