"""The handshake and FLV tag headers."""

import os

import pytest

from fbstream.rtmp import flv
from fbstream.rtmp.errors import ProtocolError, UnsupportedCodec
from fbstream.rtmp.handshake import PACKET_SIZE, ClientHandshake, ServerHandshake


def run_handshake(step):
    server = ServerHandshake(time_ms=1234)
    client = ClientHandshake(time_ms=99)
    c0c1 = client.bytes_to_send()
    assert len(c0c1) == 1 + PACKET_SIZE and c0c1[0] == 3
    rest = None
    for i in range(0, len(c0c1), step):
        assert server.receive(c0c1[i : i + step]) is None
    s012 = server.bytes_to_send()
    assert len(s012) == 1 + 2 * PACKET_SIZE
    # S1 bytes 4-7 are zero (ffmpeg's player checks a digest otherwise).
    assert s012[5:9] == b"\x00\x00\x00\x00"
    # S2 echoes C1.
    assert s012[1 + PACKET_SIZE :] == c0c1[1:]
    for i in range(0, len(s012), step):
        rest = client.receive(s012[i : i + step])
    assert rest == b"" and client.complete
    c2 = client.bytes_to_send()
    assert c2 == s012[1 : 1 + PACKET_SIZE]
    trailing = b"\x03first chunk"
    data = c2 + trailing
    for i in range(0, len(data), step):
        rest = server.receive(data[i : i + step])
        if rest is not None:
            break
    assert server.complete and rest is not None
    return rest + data[i + step :]


@pytest.mark.parametrize("step", [1, 7, 5000])
def test_handshake(step):
    assert run_handshake(step) == b"\x03first chunk"


def test_ffmpeg_style_c1_version_accepted():
    server = ServerHandshake()
    c1 = b"\x00\x00\x00\x00" + bytes((9, 0, 124, 2)) + os.urandom(PACKET_SIZE - 8)
    assert server.receive(b"\x03" + c1) is None
    assert len(server.bytes_to_send()) == 1 + 2 * PACKET_SIZE


@pytest.mark.parametrize("version", [0, 6, 0x47])  # 0x47: "G" of an HTTP GET
def test_wrong_version_refused_on_the_first_byte(version):
    with pytest.raises(ProtocolError, match="version"):
        ServerHandshake().receive(bytes((version,)))


def test_avc_video_headers():
    seq = flv.parse_video(b"\x17\x00\x00\x00\x00\x01\x64")
    assert seq.codec == "avc1" and seq.sequence_header and not seq.keyframe
    key = flv.parse_video(b"\x17\x01\x00\x00\x21" + b"\x00" * 8)
    assert key.keyframe and key.composition_time == 0x21 and key.data_offset == 5
    inter = flv.parse_video(b"\x27\x01\xff\xff\xfe")
    assert not inter.keyframe and inter.composition_time == -2


@pytest.mark.parametrize("fourcc", ["hvc1", "av01", "vp09", "avc1"])
def test_enhanced_rtmp_video_headers(fourcc):
    seq = flv.parse_video(bytes((0x80 | 0x10 | 0,)) + fourcc.encode() + b"\x01")
    assert seq.enhanced and seq.codec == fourcc and seq.sequence_header
    frames = flv.parse_video(bytes((0x80 | 0x10 | 1,)) + fourcc.encode() + b"\x00\x00\x05" + b"data")
    assert frames.keyframe
    if fourcc in ("hvc1", "avc1"):
        assert frames.composition_time == 5 and frames.data_offset == 8
    else:
        assert frames.data_offset == 5
    framesx = flv.parse_video(bytes((0x80 | 0x20 | 3,)) + fourcc.encode() + b"data")
    assert framesx.frame_type == flv.FRAME_INTER and framesx.data_offset == 5


def test_enhanced_multitrack_is_unsupported():
    with pytest.raises(UnsupportedCodec):
        flv.parse_video(bytes((0x80 | 0x10 | 6,)) + b"\x00hvc1")


@pytest.mark.parametrize("payload", [b"", b"\x17\x01", b"\x90hv", b"\x91avc1\x00"])
def test_truncated_video(payload):
    with pytest.raises(ProtocolError):
        flv.parse_video(payload)


def test_legacy_codec_name():
    assert flv.parse_video(b"\x12\x00").codec == "Sorenson H.263"


def test_audio_headers():
    seq = flv.parse_audio(b"\xaf\x00\x12\x10")
    assert seq.codec == "AAC" and seq.sequence_header
    raw = flv.parse_audio(b"\xaf\x01\x21")
    assert not raw.sequence_header and raw.data_offset == 2
    assert flv.parse_audio(b"\x2f\xff").codec == "MP3"
    with pytest.raises(ProtocolError):
        flv.parse_audio(b"\xaf")


def test_aggregate_split_rebases_timestamps():
    def sub(type_id, ts, body):
        return flv.file_tag(type_id, ts, body)

    payload = sub(9, 5000, b"\x17\x01\x00\x00\x00v") + sub(8, 5020, b"\xaf\x01a")
    assert list(flv.split_aggregate(payload, 100)) == [
        (9, 100, b"\x17\x01\x00\x00\x00v"), (8, 120, b"\xaf\x01a"),
    ]


@pytest.mark.parametrize(
    "payload",
    [b"\x09\x00\x00", flv.file_tag(9, 0, b"abc")[:-2], flv.file_tag(20, 0, b"x")],
)
def test_bad_aggregates(payload):
    with pytest.raises(ProtocolError):
        list(flv.split_aggregate(payload, 0))


def test_file_tag_layout():
    tag = flv.file_tag(9, 0x12345678, b"abc")
    assert tag[:11] == b"\x09\x00\x00\x03\x34\x56\x78\x12\x00\x00\x00"
    assert tag[11:14] == b"abc" and tag[14:] == (14).to_bytes(4, "big")
    assert flv.file_header() == b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00"
