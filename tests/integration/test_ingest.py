"""
RTMP and RTMPS ingest with clients we did not write: the ffmpeg tool and PyAV
(libavformat's RTMP client) publishing H.264 + AAC, and ffmpeg playing.
"""

from __future__ import annotations

import glob
import os

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import ITransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from fbstream.rtmp import flv
from fbstream.rtmp.chunk import ChunkEncoder
from fbstream.rtmp.handshake import ClientHandshake
from fbstream.rtmp.messages import AUDIO, DATA_AMF0, VIDEO

from .conftest import ffmpeg_play, probe_packets, pyav_counts, pyav_publish, run, sleep, tool


def media_only(tally, type_id):
    """Messages of a type, less codec sequence headers and end-of-sequence tags."""
    out = []
    for m in tally.of_type(type_id):
        if type_id == VIDEO:
            tag = flv.parse_video(m.payload)
            if tag.sequence_header or tag.end_of_sequence:
                continue
        if type_id == AUDIO and flv.parse_audio(m.payload).sequence_header:
            continue
        out.append(m)
    return out


def assert_monotonic(messages):
    stamps = [m.timestamp for m in messages]
    assert stamps == sorted(stamps), "timestamps go backwards"


def recording(pop):
    (path,) = glob.glob(os.path.join(pop.record_dir, "*.flv"))
    return path


@pytest.mark.parametrize("tls", [False, True], ids=["rtmp", "rtmps"])
@pytest_twisted.inlineCallbacks
def test_ffmpeg_publishes(pop, source_flv, tls):
    name = "ff" + ("s" if tls else "")
    started = pop.tallies.wait_for(name)
    out, err, code = yield run(
        tool("ffmpeg"), "-hide_banner", "-loglevel", "error", "-re", "-i", source_flv,
        "-c", "copy", "-f", "flv", pop.url(name, tls),
    )
    assert code == 0, err.decode()[-2000:]
    tally = yield started
    yield tally.done
    source = probe_packets(source_flv)
    want_video = [p for p in source if p[0] == "video"]
    want_audio = [p for p in source if p[0] == "audio"]
    video = media_only(tally, VIDEO)
    audio = media_only(tally, AUDIO)
    assert len(video) == len(want_video) == 300
    assert len(audio) == len(want_audio)
    assert [m.timestamp for m in video] == [p[1] for p in want_video]
    assert_monotonic(video)
    assert_monotonic(audio)
    assert tally.stream.metadata_values["width"] == 640
    assert tally.stream.metadata_values["height"] == 360
    assert tally.stream.video_codec == "avc1" and tally.stream.audio_codec == "AAC"
    # The FLV recorder (written off the reactor) holds exactly what ffmpeg sent.
    yield sleep(0.2)
    recorded = probe_packets(recording(pop))
    assert [p[:2] for p in recorded] == [p[:2] for p in source]


@pytest.mark.parametrize("tls", [False, True], ids=["rtmp", "rtmps"])
@pytest_twisted.inlineCallbacks
def test_pyav_publishes(pop, tls):
    name = "pyav" + ("s" if tls else "")
    started = pop.tallies.wait_for(name)
    result = yield pyav_publish(pop.url(name, tls), "--duration", "10", "--size", "640x360")
    counts = pyav_counts(result)
    tally = yield started
    yield tally.done
    video = media_only(tally, VIDEO)
    audio = media_only(tally, AUDIO)
    assert len(video) == counts["video_packets"] == 300
    assert len(audio) == counts["audio_packets"]
    assert sum(flv.parse_video(m.payload).keyframe for m in video) == counts["keyframes"] == 5
    assert_monotonic(video)
    assert_monotonic(audio)
    assert tally.stream.metadata_values["width"] == 640
    assert video[-1].timestamp >= 9900


@pytest_twisted.inlineCallbacks
def test_extended_timestamps_throughout(pop):
    """A publish whose timestamps start above 0xFFFFFF ms (about 4 h 40 min)."""
    start_ms = 17_000_000
    assert start_ms > 0xFFFFFF
    started = pop.tallies.wait_for("late")
    result = yield pyav_publish(
        pop.url("late"), "--duration", "10", "--size", "320x240", "--fast", "--start-ms", str(start_ms)
    )
    counts = pyav_counts(result)
    tally = yield started
    yield tally.done
    video = media_only(tally, VIDEO)
    audio = media_only(tally, AUDIO)
    assert len(video) == counts["video_packets"]
    assert len(audio) == counts["audio_packets"]
    assert all(m.timestamp > 0xFFFFFF for m in video + audio)
    assert video[-1].timestamp - video[0].timestamp >= 9900
    assert_monotonic(video)
    assert_monotonic(audio)
    yield sleep(0.2)
    recorded = probe_packets(recording(pop))
    assert min(p[1] for p in recorded) > 0xFFFFFF


@pytest_twisted.inlineCallbacks
def test_ffmpeg_plays_a_live_stream(pop, tmp_path):
    publishing = pyav_publish(pop.url("live1"), "--duration", "8", "--size", "640x360")
    yield pop.tallies.wait_for("live1")
    yield sleep(2)
    packets = yield ffmpeg_play(pop.url("live1"), str(tmp_path / "played.flv"))
    pyav_counts((yield publishing))
    video = [p for p in packets if p[0] == "video"]
    assert len(video) >= 80  # 3 s at 30 fps, from the cached keyframe on
    assert video[0][2], "a player must start on a keyframe"
    assert [p for p in packets if p[0] == "audio"]


@pytest_twisted.inlineCallbacks
def test_second_publisher_gets_a_clear_error(pop, source_flv):
    publishing = pyav_publish(pop.url("busy"), "--duration", "6", "--size", "320x240")
    tally = yield pop.tallies.wait_for("busy")
    out, err, code = yield run(
        tool("ffmpeg"), "-hide_banner", "-loglevel", "error", "-re", "-i", source_flv,
        "-c", "copy", "-f", "flv", pop.url("busy"),
    )
    assert code != 0
    assert b"already being published" in err
    counts = pyav_counts((yield publishing))
    yield tally.done
    assert len(media_only(tally, VIDEO)) == counts["video_packets"]


class Hostile(Protocol):
    """Completes the handshake, then sends ``payload`` and waits to be closed."""

    transport: ITransport

    def __init__(self, payload):
        self.payload = payload
        self.handshake = ClientHandshake()
        self.closed: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.handshake.bytes_to_send())

    def dataReceived(self, data):
        if self.handshake.complete:
            return
        if self.handshake.receive(data) is not None:
            self.transport.write(self.handshake.bytes_to_send() + self.payload)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed.callback(None)


@pytest_twisted.inlineCallbacks
def test_hostile_clients_do_not_disturb_a_publisher(pop):
    publishing = pyav_publish(pop.url("steady"), "--duration", "6", "--size", "320x240")
    tally = yield pop.tallies.wait_for("steady")
    payloads = [
        bytes([0x43]) * 5000,  # type-1 headers on a chunk stream never opened
        ChunkEncoder().set_chunk_size(10**6) + b"\x06\x00\x00\x00\xff\xff\xff\x09\x01\x00\x00\x00" + b"x" * 1000,
        ChunkEncoder().encode(3, 0, 99, 0, b"no such message type"),
        ChunkEncoder().encode(3, 0, 20, 0, b"\x02\x00\x07connect" + b"\x03\x00\x01a" * 3000),
        ChunkEncoder().encode(3, 0, DATA_AMF0, 0, b"\x11amf3"),
    ]
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", pop.rtmp_port)
    for payload in payloads:
        proto = yield connectProtocol(endpoint, Hostile(payload))
        yield proto.closed  # the server closes each one
    counts = pyav_counts((yield publishing))
    yield tally.done
    assert len(media_only(tally, VIDEO)) == counts["video_packets"]
    assert len(media_only(tally, AUDIO)) == counts["audio_packets"]


@pytest_twisted.inlineCallbacks
def test_rtmpdump_plays_until_the_publisher_leaves(pop, tmp_path):
    """librtmp (what OBS is built on) as an independent player."""
    publishing = pyav_publish(pop.url("lib"), "--duration", "5", "--size", "320x240")
    yield pop.tallies.wait_for("lib")
    yield sleep(1)
    played = str(tmp_path / "rtmpdump.flv")
    out, err, code = yield run(tool("rtmpdump"), "-q", "-r", pop.url("lib"), "--live", "-o", played)
    assert code == 0, err.decode()[-2000:]
    pyav_counts((yield publishing))
    packets = probe_packets(played)
    video = [p for p in packets if p[0] == "video"]
    assert video[0][2] and len(video) >= 90  # from the cached keyframe to the end
    out, err, code = yield run(tool("ffmpeg"), "-v", "error", "-i", played, "-f", "null", "-")
    assert code == 0, err.decode()[-2000:]
