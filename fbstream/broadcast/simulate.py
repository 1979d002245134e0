"""
A broadcaster's upload on a simulated link, for the benchmark and the tests:
:class:`~fbstream.broadcast.rate.UploadRate` and OBS's dynamic bitrate on
the same steps of the link's rate.

The model, in steps of :data:`STEP` seconds: the encoder makes its bitrate
(video and audio) as a steady flow of bytes; the link carries at most its
rate, after a one-way delay, from the kernel's socket buffer (at most
``socket_buffer`` bytes). What cannot go into the socket waits in the
sender's own queue: Twisted's buffer for ours (unbounded: the controller
measures it with everything else), OBS's packet queue for OBS (whose
length is what triggers it). The server acknowledges every
``ack_window`` bytes. Ours drops video while its queue is past
:data:`~fbstream.broadcast.rate.QUEUE_DROP` (OBS's dynamic bitrate drops none).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import attrs

from fbstream.broadcast.rate import ObsDynamicBitrate, UploadRate

#: Simulation step, and how often each controller looks (ours: the
#: broadcaster's tick; OBS looks at each packet, about every frame).
STEP = 0.01
OURS_EVERY = 0.25
OBS_EVERY = 1 / 30
#: Linux's default socket send buffer once autotuned for a few Mbit/s.
SOCKET_BUFFER = 512 * 1024
ONE_WAY = 0.02


@attrs.frozen
class Sample:
    t: float
    link: float  # bit/s
    video: int  # the controller's bitrate
    carried: float  # bit/s the link carried over the last step
    delay: float  # seconds from encoding to arrival of the newest byte


@attrs.frozen
class StepFigures:
    """What one step of the limit did to the upload."""

    at: float
    link: int
    #: Seconds from the step until the bitrate (video and audio) first fit
    #: the link (a step down), or reached 90 % of what fits (a step up); None: never.
    converged: float | None
    #: Afterwards: the most the bitrate passed the link by (kbit/s) and for
    #: how many seconds in all (probing), the worst delay the queue added
    #: (s, over the whole step), and the share of the link carried.
    overshoot_kbps: float
    seconds_over: float
    worst_delay: float
    used: float


def run(controller: str, steps: Sequence[tuple[float, int]], duration: float, *, maximum: int = 2_500_000,
        floor: int = 200_000, audio: int = 64_000, obs_inc_timer: float | None = None,
        socket_buffer: int = SOCKET_BUFFER) -> list[Sample]:
    """``controller``: "ours" or "obs"; ``steps``: (time, link bit/s), the first at 0."""
    ours = UploadRate(maximum, floor, audio)
    obs = ObsDynamicBitrate(maximum, audio)
    if obs_inc_timer:
        obs.inc_timer = obs_inc_timer
    video = maximum
    app_queue = 0.0  # bytes the sender holds
    socket = 0.0  # bytes in the kernel's buffer
    made = sent = into_socket = delivered = 0.0
    in_flight: deque[tuple[float, float]] = deque()  # (arrives at, bytes)
    acked = 0
    # (bytes made before, time made): to know how late each byte arrives.
    made_marks: deque[tuple[float, float]] = deque([(0.0, 0.0)])
    samples: list[Sample] = []
    next_ours = next_obs = 0.0
    schedule = list(steps)
    link = float(schedule[0][1])
    t = 0.0
    while t < duration:
        while schedule and schedule[0][0] <= t:
            link = float(schedule.pop(0)[1])
        dropping = controller == "ours" and ours.should_drop()  # video waits for a keyframe
        made_now = ((0 if dropping else video) + audio) / 8 * STEP
        made += made_now
        made_marks.append((made, t))
        if controller == "ours":
            sent += made_now  # into Twisted's buffer, then the socket's as it has room
            app_queue += made_now
        else:
            app_queue += made_now
        moved = min(app_queue, socket_buffer - socket)
        app_queue -= moved
        socket += moved
        into_socket += moved
        carried = min(socket, link / 8 * STEP)
        socket -= carried
        in_flight.append((t + ONE_WAY, carried))
        while in_flight and in_flight[0][0] <= t:
            delivered += in_flight.popleft()[1]
        # The server acknowledges whole windows; the acknowledgement takes the way back.
        acked_now = int(delivered // ours.ack_window * ours.ack_window)
        while len(made_marks) > 1 and made_marks[1][0] <= delivered:
            made_marks.popleft()
        delay = t - made_marks[0][1]
        if controller == "ours" and t >= next_ours:
            next_ours = t + OURS_EVERY
            acked = acked_now
            change = ours.tick(t, int(sent), acked)
            if change is not None:
                video = change.video
        elif controller == "obs" and t >= next_obs:
            next_obs = t + OBS_EVERY
            queued = app_queue * 8 / max(1.0, video + audio)
            change = obs.tick(t, int(into_socket), queued)
            if change is not None:
                video = change.video
        samples.append(Sample(round(t, 3), link, video, carried * 8 / STEP, delay))
        t += STEP
    return samples


def figures(samples: list[Sample], steps: Sequence[tuple[float, int]], audio: int = 64_000,
            maximum: int = 2_500_000) -> list[StepFigures]:
    """Per step of the link (after the first): convergence, overshoot, delay, use."""
    out = []
    for index, (at, rate) in enumerate(steps):
        if index == 0:
            continue
        end = steps[index + 1][0] if index + 1 < len(steps) else samples[-1].t + STEP
        window = [s for s in samples if at <= s.t < end]
        fits = min(maximum + audio, rate)
        down = rate < steps[index - 1][1]
        converged = None
        for s in window:
            if (s.video + audio <= rate) if down else (s.video + audio >= 0.9 * fits):
                converged = s.t - at
                break
        after = [s for s in window if converged is not None and s.t >= at + converged]
        over = [s.video + audio - rate for s in after if s.video + audio > rate]
        worst = max(s.delay for s in window)
        used = sum(s.carried for s in after) / len(after) / rate if after else 0.0
        out.append(StepFigures(at, rate, None if converged is None else round(converged, 2),
                               round(max(over + [0]) / 1000), round(len(over) * STEP, 1), round(worst, 2),
                               round(used, 3)))
    return out
