"""The chunk stream codec: every header form, fed whole and a byte at a time."""

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fbstream.rtmp.chunk import (
    ChunkDecoder,
    ChunkEncoder,
    Message,
    basic_header,
)
from fbstream.rtmp.errors import ProtocolError


def feed_all(decoder, data, step=None):
    out = []
    if step is None:
        return decoder.feed(data)
    for i in range(0, len(data), step):
        out += decoder.feed(data[i : i + step])
    return out


def both_ways(data, **kw):
    """Decode ``data`` whole and one byte at a time; both must agree."""
    whole = feed_all(ChunkDecoder(**kw), data)
    bytewise = feed_all(ChunkDecoder(**kw), data, step=1)
    assert whole == bytewise
    return whole


def header0(csid, ts, length, type_id, msid):
    return basic_header(0, csid) + ts.to_bytes(3, "big") + length.to_bytes(3, "big") + bytes((type_id,)) + msid.to_bytes(4, "little")


def test_basic_header_forms():
    assert basic_header(0, 3) == b"\x03"
    assert basic_header(3, 63) == b"\xff"
    assert basic_header(1, 64) == b"\x40\x00"
    assert basic_header(1, 319) == b"\x40\xff"
    # The three-byte form is little-endian: 320 - 64 = 256 -> 00 01.
    assert basic_header(0, 320) == b"\x01\x00\x01"
    assert basic_header(0, 65599) == b"\x01\xff\xff"


@pytest.mark.parametrize("csid", [3, 63, 64, 319, 320, 1000, 65599])
def test_csid_forms_decode(csid):
    data = header0(csid, 5, 3, 9, 1) + b"abc"
    assert both_ways(data) == [Message(csid, 5, 9, 1, b"abc")]


def test_all_four_header_formats():
    data = (
        header0(4, 1000, 2, 8, 1) + b"a0"
        # type 1: delta 20, new length and type, same stream
        + b"\x44" + (20).to_bytes(3, "big") + (3).to_bytes(3, "big") + b"\x09" + b"v01"
        # type 2: delta 30, length and type as before
        + b"\x84" + (30).to_bytes(3, "big") + b"v02"
        # type 3 starting a new message: reuses the previous delta (30)
        + b"\xc4" + b"v03"
    )
    assert both_ways(data) == [
        Message(4, 1000, 8, 1, b"a0"),
        Message(4, 1020, 9, 1, b"v01"),
        Message(4, 1050, 9, 1, b"v02"),
        Message(4, 1080, 9, 1, b"v03"),
    ]


def test_continuation_chunks_at_default_size():
    payload = os.urandom(300)
    data = header0(6, 0, 300, 9, 1) + payload[:128] + b"\xc6" + payload[128:256] + b"\xc6" + payload[256:]
    assert both_ways(data) == [Message(6, 0, 9, 1, payload)]


def test_interleaved_chunk_streams():
    a = os.urandom(200)
    b = os.urandom(150)
    data = (
        header0(4, 0, 200, 8, 1) + a[:128]
        + header0(6, 0, 150, 9, 1) + b[:128]
        + b"\xc4" + a[128:]
        + b"\xc6" + b[128:]
    )
    assert both_ways(data) == [Message(4, 0, 8, 1, a), Message(6, 0, 9, 1, b)]


@pytest.mark.parametrize("repeat", [True, False])
def test_extended_timestamp_peek_rule(repeat):
    """Continuation chunks may or may not repeat the extended timestamp."""
    ts = 0x01234567
    ext = struct.pack(">I", ts)
    payload = os.urandom(300)
    cont = b"\xc6" + (ext if repeat else b"")
    data = (
        basic_header(0, 6) + b"\xff\xff\xff" + (300).to_bytes(3, "big") + b"\x09" + (1).to_bytes(4, "little")
        + ext + payload[:128] + cont + payload[128:256] + cont + payload[256:]
    )
    assert both_ways(data) == [Message(6, ts, 9, 1, payload)]


def test_extended_delta_on_type3_new_message():
    ext = struct.pack(">I", 0x01000000)
    data = (
        header0(5, 10, 1, 9, 1) + b"a"
        + b"\x85\xff\xff\xff" + ext + b"b"  # type 2 with an extended delta
        + b"\xc5" + ext + b"c"  # type 3 new message repeats the extended delta
    )
    assert [(m.timestamp, m.payload) for m in both_ways(data)] == [
        (10, b"a"), (10 + 0x01000000, b"b"), (10 + 0x02000000, b"c"),
    ]


def test_timestamp_wraps_around():
    data = header0(4, 0xFFFFFF, 1, 8, 1)
    data = (
        basic_header(0, 4) + b"\xff\xff\xff" + b"\x00\x00\x01\x08" + (1).to_bytes(4, "little")
        + struct.pack(">I", 0xFFFFFFF0) + b"a"
        + b"\x84" + (0x20).to_bytes(3, "big") + b"b"
    )
    assert [m.timestamp for m in both_ways(data)] == [0xFFFFFFF0, 0x10]


def test_set_chunk_size_applies_to_the_next_chunk_in_the_same_feed():
    payload = os.urandom(4096)
    data = (
        header0(2, 0, 4, 1, 0) + struct.pack(">I", 4096)
        + header0(6, 0, 4096, 9, 1) + payload
    )
    out = both_ways(data)
    assert out[1] == Message(6, 0, 9, 1, payload)


def test_largest_chunk_sizes():
    for size in (1_000_000, 0xFFFFFF):
        enc = ChunkEncoder()
        payload = os.urandom(2_000_000)
        data = enc.set_chunk_size(size) + enc.encode(6, 0, 9, 1, payload)
        dec = ChunkDecoder()
        out = feed_all(dec, data, step=65536)
        assert out[-1].payload == payload
        assert dec.chunk_size == size


def test_abort_drops_the_partial_message():
    data = (
        header0(6, 0, 300, 9, 1) + b"x" * 128
        + header0(2, 0, 4, 2, 0) + struct.pack(">I", 6)
        + header0(6, 0, 3, 9, 1) + b"new"
    )
    out = both_ways(data)
    assert out[-1] == Message(6, 0, 9, 1, b"new")
    assert len(out) == 2


messages = st.lists(
    st.tuples(
        st.sampled_from([2, 3, 4, 5, 6, 63, 64, 300, 319, 320, 65599]),
        st.integers(0, 0xFFFFFFFF),
        st.sampled_from([8, 9, 18, 20]),
        st.integers(0, 2**32 - 1),
        st.binary(max_size=2000),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(messages, st.integers(1, 5000), st.data())
def test_encode_decode_round_trip(msgs, chunk_size, data):
    enc = ChunkEncoder()
    written = bytearray(enc.set_chunk_size(chunk_size))
    for csid, ts, type_id, msid, payload in msgs:
        written += enc.encode(csid, ts, type_id, msid, payload)
    stream = bytes(written)
    expected = [Message(2, 0, 1, 0, struct.pack(">I", chunk_size))] + [
        Message(*m) for m in msgs
    ]
    assert feed_all(ChunkDecoder(max_message_size=1 << 20), stream) == expected
    step = data.draw(st.integers(1, max(1, len(stream))))
    assert feed_all(ChunkDecoder(max_message_size=1 << 20), stream, step) == expected


def test_round_trip_byte_at_a_time_with_extended_timestamps():
    enc = ChunkEncoder()
    stream = bytearray()
    expected = []
    for i, ts in enumerate([0x00FFFFFE, 0x00FFFFFF, 0x01000000, 0xFFFFFFFF, 5]):
        payload = os.urandom(400 + i)
        stream += enc.encode(6, ts, 9, 1, payload)
        expected.append(Message(6, ts, 9, 1, payload))
    assert both_ways(bytes(stream)) == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_is_a_clean_error(blob):
    try:
        ChunkDecoder().feed(blob)
    except ProtocolError:
        pass


def test_hostile_set_chunk_sizes():
    for value in (0, 0x1000000, 0x80000000, 10**9):
        with pytest.raises(ProtocolError, match="Set Chunk Size"):
            ChunkDecoder().feed(header0(2, 0, 4, 1, 0) + struct.pack(">I", value))


def test_truncated_set_chunk_size():
    with pytest.raises(ProtocolError, match="too short"):
        ChunkDecoder().feed(header0(2, 0, 2, 1, 0) + b"\x00\x10")


def test_oversized_message_refused_before_it_is_buffered():
    dec = ChunkDecoder(max_message_size=1000)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        dec.feed(header0(6, 0, 0xFFFFFF, 9, 1))


def test_pending_bytes_are_bounded_across_chunk_streams():
    dec = ChunkDecoder(max_message_size=1 << 20, max_pending=5_000)
    with pytest.raises(ProtocolError, match="unfinished"):
        for csid in range(3, 60):
            dec.feed(header0(csid, 0, 1 << 20, 9, 1) + b"x" * 128)


def test_too_many_chunk_streams():
    dec = ChunkDecoder(max_chunk_streams=4)
    with pytest.raises(ProtocolError, match="chunk streams"):
        for csid in range(3, 10):
            dec.feed(header0(csid, 0, 1, 9, 1) + b"x")


def test_first_chunk_of_a_stream_must_be_type_0():
    with pytest.raises(ProtocolError, match="starts with a type-1"):
        ChunkDecoder().feed(b"\x46" + b"\x00" * 7)


def test_new_header_in_the_middle_of_a_message():
    with pytest.raises(ProtocolError, match="before the last message ended"):
        ChunkDecoder().feed(header0(6, 0, 300, 9, 1) + b"x" * 128 + header0(6, 0, 1, 9, 1) + b"y")


def test_encoder_compresses_headers():
    enc = ChunkEncoder()
    first = enc.encode(6, 100, 9, 1, b"abc")
    second = enc.encode(6, 133, 9, 1, b"def")  # same length and type: type 2
    third = enc.encode(6, 166, 9, 1, b"ghij")  # new length: type 1
    back = enc.encode(6, 10, 9, 1, b"k")  # backwards: type 0
    assert first[0] >> 6 == 0 and second[0] >> 6 == 2 and third[0] >> 6 == 1 and back[0] >> 6 == 0
    assert both_ways(first + second + third + back) == [
        Message(6, 100, 9, 1, b"abc"), Message(6, 133, 9, 1, b"def"),
        Message(6, 166, 9, 1, b"ghij"), Message(6, 10, 9, 1, b"k"),
    ]
