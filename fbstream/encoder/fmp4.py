"""
Reading (never writing) fragmented MP4 as PyAV's mp4 muxer produces it: split
its output into the init segment (``ftyp`` + ``moov``) and ``moof``+``mdat``
chunks, and read a chunk's decode time.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

_HEADER = struct.Struct(">I4s")


class BoxError(ValueError):
    """The bytes are not the MP4 boxes we expect."""


def boxes(data: bytes | bytearray, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes, int, int]]:
    """``(type, offset, size)`` of each whole box in ``data[start:end]``."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = _HEADER.unpack_from(data, pos)
        if size == 1:
            if pos + 16 > end:
                return
            size = struct.unpack_from(">Q", data, pos + 8)[0]
        if size < 8:
            raise BoxError("box %r of size %d" % (kind, size))
        if pos + size > end:
            return
        yield kind, pos, size
        pos += size


class FragmentSplitter:
    """
    Fed the muxer's output as it is written; returns the init segment once and
    each ``moof``+``mdat`` pair as soon as both are whole.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._init = bytearray()
        self.init: bytes | None = None

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        chunks = []
        consumed = 0
        moof_at = -1
        for kind, pos, size in boxes(self._buf):
            if kind in (b"ftyp", b"moov") and self.init is None:
                self._init += self._buf[pos : pos + size]
                if kind == b"moov":
                    self.init = bytes(self._init)
                consumed = pos + size
            elif kind == b"moof":
                moof_at = pos
            elif kind == b"mdat" and moof_at >= 0:
                chunks.append(bytes(self._buf[moof_at : pos + size]))
                consumed = pos + size
                moof_at = -1
            elif kind not in (b"moof",):
                consumed = pos + size  # styp, sidx, free, mfra: not needed
        del self._buf[:consumed]
        return chunks


def chunks_of(segment: bytes) -> list[bytes]:
    """A media segment's ``moof``+``mdat`` chunks, in order (an archived segment's parts)."""
    return FragmentSplitter().feed(segment)


def _track_fragments(data: bytes) -> Iterator[tuple[int, int]]:
    """``(offset, size)`` of every ``traf`` in every ``moof`` of ``data``."""
    for kind, pos, size in boxes(data):
        if kind == b"moof":
            for kind2, pos2, size2 in boxes(data, pos + 8, pos + size):
                if kind2 == b"traf":
                    yield pos2, size2


def _in_track_fragments(data: bytes, wanted: bytes) -> Iterator[int]:
    """The offset of each ``wanted`` box inside every ``moof``/``traf`` of ``data``."""
    for pos, size in _track_fragments(data):
        for kind, at, _ in boxes(data, pos + 8, pos + size):
            if kind == wanted:
                yield at


def decode_time(chunk: bytes) -> int:
    """The ``tfdt`` base media decode time of a chunk's first track fragment."""
    for pos in _in_track_fragments(chunk, b"tfdt"):
        if chunk[pos + 8] == 1:
            return int(struct.unpack_from(">Q", chunk, pos + 12)[0])
        return int(struct.unpack_from(">I", chunk, pos + 12)[0])
    raise BoxError("no tfdt in chunk")


def duration(chunk: bytes) -> int:
    """
    How long a chunk (``moof`` + ``mdat``) plays, in its track's timescale:
    the ``trun`` sample durations, or the ``tfhd`` default per sample.
    """
    for pos, size in _track_fragments(chunk):
        total = 0
        default = None
        for kind, box_at, _ in boxes(chunk, pos + 8, pos + size):
            flags = int.from_bytes(chunk[box_at + 9 : box_at + 12], "big")
            if kind == b"tfhd" and flags & 0x08:
                # track id, then base offset (0x01), description index (0x02).
                at = box_at + 16 + (8 if flags & 0x01 else 0) + (4 if flags & 0x02 else 0)
                default = int(struct.unpack_from(">I", chunk, at)[0])
            elif kind == b"trun":
                count = int(struct.unpack_from(">I", chunk, box_at + 12)[0])
                at = box_at + 16 + (4 if flags & 0x01 else 0) + (4 if flags & 0x04 else 0)
                if flags & 0x100:
                    step = 4 * sum(1 for bit in (0x100, 0x200, 0x400, 0x800) if flags & bit)
                    total += sum(int(struct.unpack_from(">I", chunk, at + i * step)[0]) for i in range(count))
                elif default is not None:
                    total += default * count
                else:
                    raise BoxError("no sample durations in chunk")
        return total
    raise BoxError("no track fragment in chunk")


def sample_count(segment: bytes) -> int:
    """How many samples (frames) the ``trun`` boxes of a media segment hold."""
    return sum(int(struct.unpack_from(">I", segment, pos + 12)[0])
               for pos in _in_track_fragments(segment, b"trun"))


def timescale(init: bytes) -> int:
    """The ``mdhd`` timescale of the (single) track of an init segment."""
    pos = init.find(b"mdhd")
    if pos < 4:
        raise BoxError("no mdhd in init segment")
    version = init[pos + 4]
    offset = pos + 4 + 4 + (16 if version == 1 else 8)
    return int(struct.unpack_from(">I", init, offset)[0])
