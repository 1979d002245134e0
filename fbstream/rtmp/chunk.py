"""
The RTMP chunk stream: a sans-IO decoder and encoder.

:class:`ChunkDecoder` takes bytes and returns complete :class:`Message` tuples;
:class:`ChunkEncoder` turns messages into chunks. Neither does I/O.

The decoder keeps all state per chunk stream id (csid), handles the four header
formats, 1-3 byte basic headers (the 3-byte form is little-endian), extended
timestamps with the "peek" rule (a type-3 chunk after an extended header
consumes four bytes only if they repeat the stored extended value, since peers
disagree on whether to repeat them), 32-bit wrap-around, Set Chunk Size (applied
before the next chunk is parsed) and Abort.

Speed: a message split into many chunks whose continuation headers are all the
same one-byte (or fixed) header, and which is wholly in the buffer, is cut out
with slicing and a strided ``del`` on a ``bytearray`` - C loops, not a Python
loop per chunk. Anything else (interleaved chunk streams, partial data, odd
headers) takes the chunk-at-a-time path, which gives the same result.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from fbstream.rtmp.errors import ProtocolError

#: The chunk size both directions start with.
DEFAULT_CHUNK_SIZE = 128
#: The largest chunk size we accept or send (the largest message length too).
MAX_CHUNK_SIZE = 0xFFFFFF
#: Default bound on one message's length.
DEFAULT_MAX_MESSAGE_SIZE = 8 * 1024 * 1024
#: Default bound on the number of chunk streams one connection may use.
DEFAULT_MAX_CHUNK_STREAMS = 64
#: Default bound on bytes held in partial messages across a connection's chunk streams.
DEFAULT_MAX_PENDING = 16 * 1024 * 1024

MSG_SET_CHUNK_SIZE = 1
MSG_ABORT = 2

_EXTENDED = 0xFFFFFF
_U32 = struct.Struct(">I")
_HEADER_SIZES = (11, 7, 3, 0)


class Message(NamedTuple):
    """One complete RTMP message."""

    csid: int
    timestamp: int
    type_id: int
    stream_id: int
    payload: bytes


def basic_header(fmt: int, csid: int) -> bytes:
    """The 1-3 byte basic header for ``fmt`` and ``csid``."""
    if 2 <= csid <= 63:
        return bytes((fmt << 6 | csid,))
    if 64 <= csid <= 319:
        return bytes((fmt << 6, csid - 64))
    if 320 <= csid <= 65599:
        rest = csid - 64
        return bytes((fmt << 6 | 1, rest & 0xFF, rest >> 8))
    raise ValueError("chunk stream id %d out of range" % (csid,))


class _ChunkStream:
    """Decoder state of one chunk stream id."""

    __slots__ = (
        "continuation",
        "delta",
        "ext_bytes",
        "extended",
        "length",
        "parts",
        "received",
        "stream_id",
        "timestamp",
        "type_id",
    )

    def __init__(self, csid: int) -> None:
        self.timestamp = 0
        self.delta = 0
        self.length = 0
        self.type_id = 0
        self.stream_id = 0
        self.extended = False
        self.ext_bytes = b""
        self.parts: list[bytes] = []
        self.received = 0
        # The bytes of a type-3 header on this csid (without extended bytes).
        self.continuation = basic_header(3, csid)


class ChunkDecoder:
    """
    Decode a chunk stream into messages.

    :param max_message_size: longer messages are a :class:`ProtocolError`.
    :param max_chunk_streams: more distinct csids than this are a ``ProtocolError``.
    :param max_pending: bytes of unfinished chunks and messages held at once,
        across csids (settable: a server raises it once it trusts the peer).
    """

    def __init__(
        self,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_chunk_streams: int = DEFAULT_MAX_CHUNK_STREAMS,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        self.chunk_size = DEFAULT_CHUNK_SIZE
        self.max_message_size = max_message_size
        self.max_chunk_streams = max_chunk_streams
        self.max_pending = max_pending
        #: Every byte fed so far (for acknowledgements).
        self.bytes_received = 0
        self._buf = bytearray()
        self._streams: dict[int, _ChunkStream] = {}
        self._pending = 0

    def feed(self, data: bytes) -> list[Message]:
        """Add ``data``; return every message completed by it, in order."""
        self.bytes_received += len(data)
        buf = self._buf
        buf += data
        out: list[Message] = []
        pos = 0
        step = self._chunk
        while True:
            nxt = step(buf, pos, out)
            if nxt < 0:
                break
            pos = nxt
        if pos:
            del buf[:pos]
        if len(buf) + self._pending > self.max_pending:
            # A chunk not whole yet counts as much as a message not whole yet.
            raise ProtocolError("more than %d bytes of unfinished chunks and messages" % (self.max_pending,))
        return out

    def _chunk(self, buf: bytearray, pos: int, out: list[Message]) -> int:
        """Parse one chunk at ``pos``; return the position after it, or -1 to wait."""
        n = len(buf)
        if pos >= n:
            return -1
        b0 = buf[pos]
        fmt = b0 >> 6
        csid = b0 & 0x3F
        p = pos + 1
        if csid == 0:
            if p + 1 > n:
                return -1
            csid = buf[p] + 64
            p += 1
        elif csid == 1:
            if p + 2 > n:
                return -1
            csid = buf[p] + (buf[p + 1] << 8) + 64
            p += 2
        hsize = _HEADER_SIZES[fmt]
        if p + hsize > n:
            return -1
        st = self._streams.get(csid)
        if st is None:
            if fmt != 0:
                raise ProtocolError(
                    "chunk stream %d starts with a type-%d header" % (csid, fmt)
                )
            if len(self._streams) >= self.max_chunk_streams:
                raise ProtocolError(
                    "more than %d chunk streams in use" % (self.max_chunk_streams,)
                )
            st = self._streams[csid] = _ChunkStream(csid)

        if fmt == 3:
            extended = st.extended
            ext_bytes = st.ext_bytes
            if extended:
                # The peek rule: consume four bytes only if they repeat the value.
                if p + 4 > n:
                    return -1
                if buf[p : p + 4] == ext_bytes:
                    p += 4
            if st.received:
                timestamp = st.timestamp
            else:
                timestamp = (st.timestamp + st.delta) & 0xFFFFFFFF
            delta = st.delta
            length = st.length
            type_id = st.type_id
            stream_id = st.stream_id
        else:
            if st.received:
                raise ProtocolError(
                    "new message header on chunk stream %d before the last message ended"
                    % (csid,)
                )
            field = (buf[p] << 16) | (buf[p + 1] << 8) | buf[p + 2]
            if fmt <= 1:
                length = (buf[p + 3] << 16) | (buf[p + 4] << 8) | buf[p + 5]
                type_id = buf[p + 6]
                if fmt == 0:
                    stream_id = int.from_bytes(buf[p + 7 : p + 11], "little")
                else:
                    stream_id = st.stream_id
            else:
                length = st.length
                type_id = st.type_id
                stream_id = st.stream_id
            p += hsize
            extended = field == _EXTENDED
            if extended:
                if p + 4 > n:
                    return -1
                ext_bytes = bytes(buf[p : p + 4])
                field = _U32.unpack(ext_bytes)[0]
                p += 4
            else:
                ext_bytes = b""
            if fmt == 0:
                timestamp = field
                delta = 0
            else:
                delta = field
                timestamp = (st.timestamp + field) & 0xFFFFFFFF
            if length > self.max_message_size:
                raise ProtocolError(
                    "message of %d bytes exceeds the limit of %d"
                    % (length, self.max_message_size)
                )

        received = st.received
        remaining = length - received
        size = self.chunk_size
        take = remaining if remaining < size else size
        end = p + take
        if end > n:
            # Wait for the whole chunk; nothing has been committed yet, so the
            # header is parsed again when more bytes arrive.
            return -1

        # The chunk is whole: commit the header.
        if fmt != 3:
            st.timestamp = timestamp
            st.delta = delta
            st.length = length
            st.type_id = type_id
            st.stream_id = stream_id
            st.extended = extended
            st.ext_bytes = ext_bytes
        elif not received:
            st.timestamp = timestamp

        if take == remaining:
            # The last (or only) chunk of the message.
            if received:
                st.parts.append(bytes(buf[p:end]))
                payload = b"".join(st.parts)
                st.parts = []
                st.received = 0
                self._pending -= received
            else:
                payload = bytes(buf[p:end])
            self._deliver(out, Message(csid, timestamp, type_id, stream_id, payload))
            return end

        fast = self._whole_rest(buf, p, remaining, size, st)
        if fast is not None:
            rest, after = fast
            if received:
                st.parts.append(rest)
                payload = b"".join(st.parts)
                st.parts = []
                st.received = 0
                self._pending -= received
            else:
                payload = rest
            self._deliver(out, Message(csid, timestamp, type_id, stream_id, payload))
            return after

        self._pending += take
        if self._pending > self.max_pending:
            raise ProtocolError(
                "more than %d bytes of unfinished messages" % (self.max_pending,)
            )
        st.parts.append(bytes(buf[p:end]))
        st.received = received + take
        return end

    def _whole_rest(
        self, buf: bytearray, p: int, remaining: int, size: int, st: _ChunkStream
    ) -> tuple[bytes, int] | None:
        """
        If the rest of the message (``remaining`` payload bytes from ``p``, split
        into chunks whose type-3 headers all look alike) is in ``buf``, return it
        and the position after it, without a Python loop per chunk.
        """
        header = st.continuation
        if st.extended:
            header += st.ext_bytes
        hl = len(header)
        count = (remaining - 1) // size
        span = remaining + count * hl
        after = p + span
        if after > len(buf):
            return None
        stride = size + hl
        for j in range(hl):
            if buf[p + size + j : after : stride].count(header[j]) != count:
                return None
        raw = buf[p:after]
        for j in range(hl):
            del raw[size :: stride - j]
        return bytes(raw), after

    def _deliver(self, out: list[Message], msg: Message) -> None:
        # Protocol control that changes how the next chunk parses applies now.
        if msg.type_id == MSG_SET_CHUNK_SIZE:
            self.chunk_size = parse_chunk_size(msg.payload)
        elif msg.type_id == MSG_ABORT:
            self.abort(parse_u32(msg.payload))
        out.append(msg)

    def abort(self, csid: int) -> None:
        """Drop the unfinished message of ``csid`` (an Abort message)."""
        st = self._streams.get(csid)
        if st is not None and st.received:
            self._pending -= st.received
            st.parts = []
            st.received = 0


def parse_u32(payload: bytes) -> int:
    """The 4-byte big-endian integer that control messages carry."""
    if len(payload) < 4:
        raise ProtocolError("control message of %d bytes is too short" % (len(payload),))
    return int(_U32.unpack_from(payload)[0])


def parse_chunk_size(payload: bytes) -> int:
    """The value of a Set Chunk Size message, checked."""
    value = parse_u32(payload)
    if value & 0x80000000:
        raise ProtocolError("Set Chunk Size with the top bit set")
    if not 1 <= value <= MAX_CHUNK_SIZE:
        raise ProtocolError("Set Chunk Size of %d is out of range" % (value,))
    return value


class _OutStream:
    __slots__ = ("length", "stream_id", "timestamp", "type_id")

    def __init__(self, timestamp: int, length: int, type_id: int, stream_id: int) -> None:
        self.timestamp = timestamp
        self.length = length
        self.type_id = type_id
        self.stream_id = stream_id


class ChunkEncoder:
    """
    Turn messages into chunks.

    Headers are compressed to type 1 or 2 when the previous message on the same
    csid allows it (a delta that is non-negative in serial arithmetic); type 3 is
    used only for continuation chunks, which repeat an extended timestamp as
    ffmpeg and nginx-rtmp do.
    """

    def __init__(self) -> None:
        self.chunk_size = DEFAULT_CHUNK_SIZE
        self._streams: dict[int, _OutStream] = {}

    def set_chunk_size(self, size: int) -> bytes:
        """Switch to ``size`` and return the Set Chunk Size message announcing it."""
        if not 1 <= size <= MAX_CHUNK_SIZE:
            raise ValueError("chunk size %d out of range" % (size,))
        data = self.encode(2, 0, MSG_SET_CHUNK_SIZE, 0, _U32.pack(size))
        self.chunk_size = size
        return data

    def encode(
        self, csid: int, timestamp: int, type_id: int, stream_id: int, payload: bytes
    ) -> bytes:
        """Return the chunks of one message."""
        timestamp &= 0xFFFFFFFF
        length = len(payload)
        if length > MAX_CHUNK_SIZE:
            raise ValueError("message of %d bytes is too long for RTMP" % (length,))
        prev = self._streams.get(csid)
        delta = -1
        if prev is not None and prev.stream_id == stream_id:
            delta = (timestamp - prev.timestamp) & 0xFFFFFFFF
            if delta >= 0x80000000:
                delta = -1
        if delta < 0:
            fmt = 0
            field = timestamp
        elif prev is not None and prev.length == length and prev.type_id == type_id:
            fmt = 2
            field = delta
        else:
            fmt = 1
            field = delta
        if prev is None:
            self._streams[csid] = _OutStream(timestamp, length, type_id, stream_id)
        else:
            prev.timestamp = timestamp
            prev.length = length
            prev.type_id = type_id
            prev.stream_id = stream_id

        extended = field >= _EXTENDED
        head = bytearray(basic_header(fmt, csid))
        head += (_EXTENDED if extended else field).to_bytes(3, "big")
        if fmt <= 1:
            head += length.to_bytes(3, "big")
            head.append(type_id)
            if fmt == 0:
                head += stream_id.to_bytes(4, "little")
        continuation = basic_header(3, csid)
        if extended:
            ext = _U32.pack(field)
            head += ext
            continuation += ext
        size = self.chunk_size
        if length <= size:
            head += payload
            return bytes(head)
        head += continuation.join(
            [payload[i : i + size] for i in range(0, length, size)]
        )
        return bytes(head)
