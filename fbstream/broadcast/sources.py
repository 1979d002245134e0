"""
What a broadcaster captures, decoded by PyAV: a test pattern with a running
clock and a tone, a file played over and over, or a V4L2 camera.

A source is an endless iterator of ``(kind, frame)``: ``"video"`` frames of
the asked size in ``yuv420p`` and ``"audio"`` frames of 48 kHz stereo
``fltp``, each with ``pts`` counted from 0 in its own time base (1/rate for
video, 1/48000 for audio), in the order they are to be encoded. Reading one
blocks (a camera, a decoder): sources run on the encoder's thread, never on
a reactor's.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from typing import Any

#: The audio every source gives.
SAMPLE_RATE = 48000
LAYOUT = "stereo"


class SourceError(Exception):
    """A source that cannot be opened or read: the message says which and why."""


def pattern_pulls(width: int, height: int, rate: int, audio: bool = True) -> tuple[Any, Any]:
    """
    ``(video, audio)``: each a function that pulls the next frame of FFmpeg's
    ``testsrc2`` (a moving pattern with a running clock) and of a beeping
    440 Hz tone (48 kHz stereo ``fltp``, 1024 samples a frame); ``audio`` is
    None without it.
    """
    import av.filter

    graph = av.filter.Graph()
    vsrc = graph.add("testsrc2", "size=%dx%d:rate=%d" % (width, height, rate))
    vsink = graph.add("buffersink")
    vsrc.link_to(vsink)
    graph.configure()
    # The graphs go with the functions: freed, their sinks could not pull.
    def video() -> Any:
        return vsink.pull() if graph else None

    if not audio:
        return video, None
    agraph = av.filter.Graph()
    asrc = agraph.add("sine", "frequency=440:beep_factor=4:sample_rate=%d:samples_per_frame=1024" % (SAMPLE_RATE,))
    aformat = agraph.add("aformat", "sample_fmts=fltp:channel_layouts=%s" % (LAYOUT,))
    asink = agraph.add("abuffersink")
    asrc.link_to(aformat)
    aformat.link_to(asink)
    agraph.configure()

    def sound() -> Any:
        return asink.pull() if agraph else None

    return video, sound


def pattern(width: int, height: int, rate: int) -> Iterator[tuple[str, Any]]:
    """The test pattern with its clock, and the tone."""
    video, audio = pattern_pulls(width, height, rate)
    samples = 0
    frame_no = 0
    while True:
        frame = video()
        frame.pts, frame.time_base = frame_no, Fraction(1, rate)
        frame_no += 1
        yield "video", frame
        while samples < frame_no * SAMPLE_RATE // rate:
            chunk = audio()
            chunk.pts, chunk.time_base = samples, Fraction(1, SAMPLE_RATE)
            samples += chunk.samples
            yield "audio", chunk


def file(path: str, width: int, height: int, rate: int) -> Iterator[tuple[str, Any]]:
    """
    A media file, over and over: its first video stream scaled to the size
    and resampled to the rate, its first audio stream (silence if it has
    none) resampled to 48 kHz stereo.
    """
    import av

    try:
        av.open(path).close()
    except (av.FFmpegError, OSError) as e:
        raise SourceError("%s: %s" % (path, e)) from None
    frames = 0
    samples = 0
    while True:
        container = av.open(path)
        try:
            video_in = next((s for s in container.streams if s.type == "video"), None)
            if video_in is None:
                raise SourceError("%s has no video stream" % (path,))
            audio_in = next((s for s in container.streams if s.type == "audio"), None)
            resampler = av.AudioResampler(format="fltp", layout=LAYOUT, rate=SAMPLE_RATE)
            origin: float | None = None
            loop_frames = 0
            wanted = [video_in] + ([audio_in] if audio_in is not None else [])
            for decoded in container.decode(*wanted):
                if not isinstance(decoded, (av.VideoFrame, av.AudioFrame)) or decoded.pts is None \
                        or decoded.time_base is None:
                    continue
                at = float(decoded.pts * decoded.time_base)
                origin = at if origin is None else origin
                if isinstance(decoded, av.VideoFrame):
                    # Frames at the source's times, repeated or skipped to our rate.
                    while loop_frames <= (at - origin) * rate:
                        frame = decoded.reformat(width=width, height=height, format="yuv420p")
                        frame.pts, frame.time_base = frames, Fraction(1, rate)
                        frames += 1
                        loop_frames += 1
                        yield "video", frame
                else:
                    for chunk in resampler.resample(decoded):
                        chunk.pts, chunk.time_base = samples, Fraction(1, SAMPLE_RATE)
                        samples += chunk.samples
                        yield "audio", chunk
            if audio_in is None or samples < frames * SAMPLE_RATE // rate:
                yield from _silence_until(frames * SAMPLE_RATE // rate, samples)
                samples = max(samples, frames * SAMPLE_RATE // rate)
            if loop_frames == 0:
                raise SourceError("%s has no video frame" % (path,))
        finally:
            container.close()


def _silence_until(end: int, samples: int) -> Iterator[tuple[str, Any]]:
    import av
    import numpy

    while samples < end:
        n = min(1024, end - samples)
        chunk = av.AudioFrame.from_ndarray(numpy.zeros((2, n), dtype=numpy.float32), format="fltp", layout=LAYOUT)
        chunk.sample_rate = SAMPLE_RATE
        chunk.pts, chunk.time_base = samples, Fraction(1, SAMPLE_RATE)
        samples += n
        yield "audio", chunk


def camera(device: str, width: int, height: int, rate: int) -> Iterator[tuple[str, Any]]:
    """A V4L2 device (``/dev/video0``), with silence for audio."""
    import av

    try:
        container = av.open(device, format="v4l2", options={
            "video_size": "%dx%d" % (width, height), "framerate": str(rate)})
    except (av.FFmpegError, OSError) as e:
        raise SourceError("%s: %s" % (device, e)) from None
    frames = 0
    samples = 0
    try:
        for decoded in container.decode(video=0):
            frame = decoded.reformat(width=width, height=height, format="yuv420p")
            frame.pts, frame.time_base = frames, Fraction(1, rate)
            frames += 1
            yield "video", frame
            yield from _silence_until(frames * SAMPLE_RATE // rate, samples)
            samples = frames * SAMPLE_RATE // rate
    finally:
        container.close()


def open_source(spec: str, width: int, height: int, rate: int) -> Iterator[tuple[str, Any]]:
    """``pattern``, ``file:PATH`` or ``v4l2:/dev/videoN``."""
    kind, _, where = spec.partition(":")
    if kind == "pattern" and not where:
        return pattern(width, height, rate)
    if kind == "file" and where:
        return file(where, width, height, rate)
    if kind == "v4l2" and where:
        return camera(where, width, height, rate)
    raise SourceError("a source is pattern, file:PATH or v4l2:/dev/videoN, not %r" % (spec,))
