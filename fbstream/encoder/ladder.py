"""
The adaptive-bitrate ladder: which renditions a source is encoded to.

Rungs come from the configuration as ``"<height>:<kbps>"`` strings; a source is
never upscaled: rungs taller than it are dropped, and a source smaller than
every rung gets one rendition at its own size.
"""

from __future__ import annotations

import attrs

DEFAULT_RUNGS = ("720:2500", "480:1000", "360:600", "240:300")


@attrs.frozen
class Rung:
    height: int
    bitrate: int  # bits per second


@attrs.frozen
class VideoRendition:
    name: str
    width: int
    height: int
    bitrate: int


def parse_rungs(specs: list[str] | tuple[str, ...]) -> list[Rung]:
    """``["720:2500", ...]`` to rungs, tallest first; ValueError if malformed."""
    rungs = []
    for spec in specs:
        height, sep, kbps = spec.partition(":")
        if not sep or not height.isdigit() or not kbps.isdigit():
            raise ValueError("ladder rung %r is not <height>:<kbps>" % (spec,))
        h, k = int(height), int(kbps)
        if not (16 <= h <= 4320) or h % 2 or not (50 <= k <= 100_000):
            raise ValueError("ladder rung %r is out of range" % (spec,))
        rungs.append(Rung(h, k * 1000))
    if not rungs:
        raise ValueError("the ladder has no rungs")
    return sorted(rungs, key=lambda r: -r.height)


def _even(value: float) -> int:
    return max(2, round(value / 2) * 2)


def plan(source_width: int, source_height: int, rungs: list[Rung]) -> list[VideoRendition]:
    """The video renditions for a source of the given size, tallest first."""
    if source_width <= 0 or source_height <= 0:
        raise ValueError("source has no size")
    chosen = [r for r in rungs if r.height <= source_height]
    if not chosen:
        smallest = rungs[-1]
        scale = source_height / smallest.height
        chosen = [Rung(source_height - source_height % 2, max(50_000, int(smallest.bitrate * scale)))]
    out = []
    for rung in chosen:
        width = _even(source_width * rung.height / source_height)
        out.append(VideoRendition("%dp" % (rung.height,), width, rung.height, rung.bitrate))
    return out
