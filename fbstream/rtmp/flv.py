"""
FLV tag bodies as RTMP carries them: the audio and video headers (legacy and
Enhanced RTMP), aggregate messages, and FLV file framing for recorders.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import attrs

from fbstream.rtmp.errors import ProtocolError, UnsupportedCodec

# Legacy video codec ids (low nibble of byte 0).
VIDEO_CODEC_AVC = 7
VIDEO_CODEC_NAMES = {
    2: "Sorenson H.263",
    3: "Screen video",
    4: "On2 VP6",
    5: "On2 VP6 with alpha",
    6: "Screen video 2",
    7: "avc1",
    12: "hvc1",  # a pre-standard HEVC id some Chinese encoders use
}
# Legacy audio formats (high nibble of byte 0).
AUDIO_FORMAT_AAC = 10
AUDIO_FORMAT_NAMES = {
    0: "Linear PCM",
    1: "ADPCM",
    2: "MP3",
    3: "Linear PCM LE",
    4: "Nellymoser 16k",
    5: "Nellymoser 8k",
    6: "Nellymoser",
    7: "G.711 A-law",
    8: "G.711 mu-law",
    10: "AAC",
    11: "Speex",
    14: "MP3 8k",
    15: "Device-specific",
}

# Frame types.
FRAME_KEY = 1
FRAME_INTER = 2
FRAME_DISPOSABLE = 3
FRAME_GENERATED_KEY = 4
FRAME_COMMAND = 5

# Packet types: legacy AVC (byte 1) and Enhanced RTMP (low nibble of byte 0).
AVC_SEQUENCE_HEADER = 0
AVC_NALU = 1
AVC_END_OF_SEQUENCE = 2

EX_SEQUENCE_START = 0
EX_CODED_FRAMES = 1
EX_SEQUENCE_END = 2
EX_CODED_FRAMES_X = 3
EX_METADATA = 4
EX_MPEG2TS_SEQUENCE_START = 5
EX_MULTITRACK = 6
EX_MODEX = 7

@attrs.frozen
class VideoTag:
    """The header of a video message."""

    codec: str  # "avc1", "hvc1", "av01", "vp09", or a legacy codec's name
    frame_type: int
    sequence_header: bool
    end_of_sequence: bool
    composition_time: int  # ms, pts - dts
    data_offset: int  # where the codec data starts in the payload
    enhanced: bool

    @property
    def keyframe(self) -> bool:
        return self.frame_type == FRAME_KEY and not self.sequence_header

    @property
    def command(self) -> bool:
        return self.frame_type == FRAME_COMMAND


@attrs.frozen
class AudioTag:
    """The header of an audio message."""

    codec: str
    sequence_header: bool
    data_offset: int


def _si24(b0: int, b1: int, b2: int) -> int:
    value = (b0 << 16) | (b1 << 8) | b2
    return value - (1 << 24) if value & 0x800000 else value


def parse_video(payload: bytes) -> VideoTag:
    """Parse a video message's header; raise ProtocolError if truncated."""
    if not payload:
        raise ProtocolError("empty video message")
    b0 = payload[0]
    if b0 & 0x80:
        frame_type = (b0 >> 4) & 0x07
        packet_type = b0 & 0x0F
        if frame_type == FRAME_COMMAND:
            return VideoTag("", frame_type, False, False, 0, 1, True)
        if packet_type in (EX_MULTITRACK, EX_MODEX, EX_MPEG2TS_SEQUENCE_START):
            raise UnsupportedCodec(
                "Enhanced RTMP packet type %d (multitrack/ModEx) is not supported"
                % (packet_type,)
            )
        if len(payload) < 5:
            raise ProtocolError("truncated Enhanced RTMP video header")
        fourcc = payload[1:5].decode("latin-1")
        offset = 5
        cts = 0
        if packet_type == EX_CODED_FRAMES and fourcc in ("avc1", "hvc1"):
            if len(payload) < 8:
                raise ProtocolError("truncated Enhanced RTMP composition time")
            cts = _si24(payload[5], payload[6], payload[7])
            offset = 8
        return VideoTag(
            fourcc,
            frame_type,
            packet_type == EX_SEQUENCE_START,
            packet_type == EX_SEQUENCE_END,
            cts,
            offset,
            True,
        )
    frame_type = b0 >> 4
    codec_id = b0 & 0x0F
    name = VIDEO_CODEC_NAMES.get(codec_id, "video codec %d" % (codec_id,))
    if frame_type == FRAME_COMMAND:
        return VideoTag(name, frame_type, False, False, 0, 1, False)
    if codec_id == VIDEO_CODEC_AVC:
        if len(payload) < 5:
            raise ProtocolError("truncated AVC video header")
        packet_type = payload[1]
        return VideoTag(
            name,
            frame_type,
            packet_type == AVC_SEQUENCE_HEADER,
            packet_type == AVC_END_OF_SEQUENCE,
            _si24(payload[2], payload[3], payload[4]),
            5,
            False,
        )
    return VideoTag(name, frame_type, False, False, 0, 1, False)


def parse_audio(payload: bytes) -> AudioTag:
    """Parse an audio message's header; raise ProtocolError if truncated."""
    if not payload:
        raise ProtocolError("empty audio message")
    fmt = payload[0] >> 4
    if fmt == 9:
        # Enhanced RTMP audio (ExAudioTagHeader): packet type, then a FourCC.
        if len(payload) < 5:
            raise ProtocolError("truncated Enhanced RTMP audio header")
        packet_type = payload[0] & 0x0F
        fourcc = payload[1:5].decode("latin-1")
        return AudioTag(fourcc, packet_type == 0, 5)
    name = AUDIO_FORMAT_NAMES.get(fmt, "audio format %d" % (fmt,))
    if fmt == AUDIO_FORMAT_AAC:
        if len(payload) < 2:
            raise ProtocolError("truncated AAC audio header")
        return AudioTag(name, payload[1] == 0, 2)
    return AudioTag(name, False, 1)


def split_aggregate(payload: bytes, timestamp: int) -> Iterator[tuple[int, int, bytes]]:
    """
    Split an aggregate message into ``(type_id, timestamp, payload)`` triples.

    Each sub-message is an FLV tag (11-byte header, body, 4-byte back pointer);
    their timestamps are rebased so the first one equals the aggregate's.
    """
    pos = 0
    end = len(payload)
    base: int | None = None
    while pos < end:
        if pos + 11 > end:
            raise ProtocolError("truncated aggregate sub-message header")
        type_id = payload[pos]
        size = int.from_bytes(payload[pos + 1 : pos + 4], "big")
        ts = int.from_bytes(payload[pos + 4 : pos + 7], "big") | (payload[pos + 7] << 24)
        body_start = pos + 11
        body_end = body_start + size
        if body_end + 4 > end:
            raise ProtocolError("aggregate sub-message overruns its message")
        if type_id not in (8, 9, 18):
            raise ProtocolError("aggregate carries message type %d" % (type_id,))
        if base is None:
            base = ts
        yield type_id, (timestamp + ts - base) & 0xFFFFFFFF, payload[body_start:body_end]
        pos = body_end + 4


FILE_HEADER_AUDIO = 0x04
FILE_HEADER_VIDEO = 0x01
_TAG_HEADER = struct.Struct(">B3s3sB3s")


def file_header(audio: bool = True, video: bool = True) -> bytes:
    """An FLV file header followed by the first (zero) back pointer."""
    flags = (FILE_HEADER_AUDIO if audio else 0) | (FILE_HEADER_VIDEO if video else 0)
    return b"FLV\x01" + bytes((flags,)) + b"\x00\x00\x00\x09" + b"\x00\x00\x00\x00"


def file_tag(type_id: int, timestamp: int, payload: bytes) -> bytes:
    """One FLV file tag with its trailing back pointer."""
    size = len(payload)
    header = _TAG_HEADER.pack(
        type_id,
        size.to_bytes(3, "big"),
        (timestamp & 0xFFFFFF).to_bytes(3, "big"),
        (timestamp >> 24) & 0xFF,
        b"\x00\x00\x00",
    )
    return header + payload + (size + 11).to_bytes(4, "big")


class FileTags:
    """
    An FLV byte stream split into its tags as it comes (sans-IO): what a
    muxer writes, fed in pieces of any size, out as ``(type_id, timestamp,
    payload)``. ProtocolError if it does not start as FLV.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._header = True

    @property
    def pending(self) -> int:
        """Bytes held back: a tag not yet whole."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        buffer = self._buffer
        buffer += data
        if self._header:
            if buffer[:3] != b"FLV"[: len(buffer)]:
                raise ProtocolError("not an FLV stream")
            if len(buffer) < 9:
                return []
            skip = int.from_bytes(buffer[5:9], "big") + 4
            if skip < 13 or skip > 1024:
                raise ProtocolError("an FLV header of %d bytes" % (skip - 4,))
            if len(buffer) < skip:
                return []
            del buffer[:skip]
            self._header = False
        tags = []
        pos, end = 0, len(buffer)
        while pos + 11 <= end:
            size = int.from_bytes(buffer[pos + 1 : pos + 4], "big")
            body = pos + 11
            if body + size + 4 > end:
                break
            ts = int.from_bytes(buffer[pos + 4 : pos + 7], "big") | (buffer[pos + 7] << 24)
            tags.append((buffer[pos] & 0x1F, ts, bytes(buffer[body : body + size])))
            pos = body + size + 4
        del buffer[:pos]
        return tags


def read_file(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """
    ``(type_id, timestamp, payload)`` of every tag of an FLV file, for tools and
    benchmarks that replay a recording; ProtocolError if it is not FLV.
    """
    if len(data) < 13 or data[:3] != b"FLV":
        raise ProtocolError("not an FLV file")
    tags = FileTags()
    yield from tags.feed(data)
    if tags.pending >= 11:
        raise ProtocolError("truncated FLV tag at %d" % (len(data) - tags.pending,))
