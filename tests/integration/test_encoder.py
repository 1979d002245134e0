"""
The encoder role end to end: a stream published with PyAV comes out as live
DASH and HLS that the ffmpeg tool plays, with the ladder, segment and sync
properties of the issue, and replays from the archive once it ends; a client
that stops reading a growing segment is paused, not queued for.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from typing import Any, cast

import pytest
import pytest_twisted
import treq
from mpegdash.parser import MPEGDASHParser
from twisted.internet import defer, reactor, tcp
from twisted.internet.interfaces import IReactorSocket
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.python.failure import Failure

from fbstream.encoder.fmp4 import boxes, decode_time, timescale
from fbstream.httpbody import MAX_WRITE

from .conftest import eventually, pyav_counts, pyav_publish, run, sleep, start_encoder, tool

LADDER = {"720p": (1280, 720, 2_500_000), "480p": (854, 480, 1_000_000),
          "360p": (640, 360, 600_000), "240p": (426, 240, 300_000)}


@pytest_twisted.inlineCallbacks
def get(url):
    response = yield treq.get(url)
    body = yield response.content()
    return response, body


def header(response, name):
    values = response.headers.getRawHeaders(name.encode())
    return values[0] if values else None


def wait_for_manifest(base, name, timeout=15):
    """The MPD of ``name`` once it is served (a Deferred)."""
    url = "%s/live/%s/manifest.mpd" % (base, name)
    return eventually(lambda: get(url).addCallback(lambda answer: answer[1] if answer[0].code == 200 else None),
                      timeout, what="the manifest of %s" % (name,))


def preload_hint(playlist: bytes) -> tuple[int, int]:
    """The segment and part an LL-HLS playlist says come next (its ``PRELOAD-HINT``)."""
    hint = re.search(rb'PRELOAD-HINT:TYPE=PART,URI="(\d+)\.(\d+)\.m4s"', playlist)
    assert hint, playlist
    return int(hint.group(1)), int(hint.group(2))


def frames_of(path):
    out = subprocess.run(
        [tool("ffprobe"), "-v", "error", "-show_entries", "packet=pts_time,flags,size",
         "-of", "csv=p=0", path], check=True, capture_output=True, text=True).stdout
    return [(float(pts), "K" in flags, int(size)) for pts, size, flags in
            (line.split(",")[:3] for line in out.splitlines())]


@pytest_twisted.inlineCallbacks
def test_live_dash_hls_and_replay(encoder, tmp_path):
    publishing = pyav_publish(encoder.url("show"), "--duration", "10", "--size", "1280x720")
    body = yield wait_for_manifest(encoder.base, "show")

    # The live MPD: what DASH-IF IOP asks of a live manifest, read by mpegdash.
    mpd = MPEGDASHParser.parse(body.decode())
    assert mpd.type == "dynamic"
    assert mpd.profiles == "urn:mpeg:dash:profile:isoff-live:2011"
    assert mpd.availability_start_time and mpd.publish_time
    assert mpd.time_shift_buffer_depth == "PT120.000S"
    assert mpd.suggested_presentation_delay and mpd.min_buffer_time and mpd.max_segment_duration
    assert mpd.utc_timings[0].scheme_id_uri == "urn:mpeg:dash:utc:http-iso:2014"
    assert mpd.utc_timings[0].value == "/time"
    period = mpd.periods[0]
    assert period.id == "0"
    kinds = {a.content_type: a for a in period.adaptation_sets}
    assert set(kinds) == {"video", "audio"}
    template = kinds["video"].segment_templates[0]
    assert template.media == "$RepresentationID$/$Number$.m4s" and template.duration == 1000
    assert float(template.availability_time_offset) == 0.75
    # (mpegdash reads every boolean string as True; check the XML itself)
    assert b'availabilityTimeComplete="false"' in body
    assert [r.id for r in kinds["video"].representations] == ["720p", "480p", "360p", "240p"]
    assert b"<ServiceDescription" in body and b'<Latency target="1200"' in body

    # The AST does not move while live.
    yield sleep(2)
    again = MPEGDASHParser.parse((yield wait_for_manifest(encoder.base, "show")).decode())
    assert again.availability_start_time == mpd.availability_start_time

    # While it is live, /metrics has its series.
    response, metrics = yield get(encoder.base + "/metrics")
    for series in (b'fbstream_encoder_frames_in_total{stream="show"}',
                   b'fbstream_encoder_frames_out_total{rendition="240p",stream="show"}',
                   b'fbstream_encoder_segments_total{rendition="audio",stream="show"}',
                   b'fbstream_encoder_segment_availability_lag_seconds_count{stream="show"}',
                   b'fbstream_encoder_frame_encode_seconds_count{stream="show"}',
                   b'fbstream_encoder_dropped_frames_total{stream="show"}'):
        assert series in metrics, series

    # /time for UTCTiming, and cache headers.
    response, now = yield get(encoder.base + "/time")
    assert now.endswith(b"Z") and header(response, "cache-control") == b"no-store"
    response, _ = yield get(encoder.base + "/live/show/manifest.mpd")
    assert header(response, "cache-control") == b"public, max-age=1"
    response, _ = yield get(encoder.base + "/live/show/720p/1.m4s")
    assert header(response, "cache-control") == b"public, max-age=31536000, immutable"
    response, _ = yield get(encoder.base + "/live/show/720p/99999.m4s")
    assert response.code == 404 and header(response, "cache-control") == b"no-store"  # not yet: may exist soon
    response, _ = yield get(encoder.base + "/live/nope/manifest.mpd")
    assert response.code == 404
    response, _ = yield get(encoder.base + "/live/show/..%2f..%2fetc/passwd")
    assert response.code == 404

    # The ffmpeg tool's DASH demuxer plays the live manifest.
    live = str(tmp_path / "live.mkv")
    out, err, code = yield run(
        tool("ffmpeg"), "-hide_banner", "-loglevel", "error", "-y",
        "-i", encoder.base + "/live/show/manifest.mpd", "-map", "0", "-t", "2", "-c", "copy", live)
    assert code == 0, err.decode()[-2000:]

    counts = pyav_counts((yield publishing))
    yield eventually(lambda: get(encoder.base + "/live/show/manifest.mpd").addCallback(
        lambda answer: b'type="static"' in answer[1]), 10, what="the MPD to turn static")
    # Every frame published is in every rendition, but for those the encoder
    # left out, by design, while a loaded machine had it behind real time
    # (every other frame: fbstream_encoder_shed_frames).
    made = counts["video_packets"] - encoder.service.encoder.encoders["show"].transcoder.frames_shed

    # Every rendition: the ladder's size and bitrate, aligned 1 s segments
    # starting with keyframes, the same media time for the same number.
    starts: dict[str, list[float]] = {}
    for name in list(LADDER) + ["audio"]:
        response, init = yield get("%s/live/show/%s/init.mp4" % (encoder.base, name))
        assert response.code == 200
        scale = timescale(init)
        whole = bytearray(init)
        number = 1
        starts[name] = []
        while True:
            response, data = yield get("%s/live/show/%s/%d.m4s" % (encoder.base, name, number))
            if response.code != 200:
                break
            starts[name].append(decode_time(data) / scale)
            assert [b[0] for b in boxes(data)][:2] == [b"moof", b"mdat"]
            if name != "audio":
                assert len([b for b in boxes(data) if b[0] == b"moof"]) >= 3  # chunked CMAF
            whole += data
            number += 1
        assert number > 9, name
        path = str(tmp_path / ("%s.mp4" % (name,)))
        with open(path, "wb") as f:
            f.write(whole)
        if name == "audio":
            continue
        width, height, bitrate = LADDER[name]
        info = subprocess.run(
            [tool("ffprobe"), "-v", "error", "-select_streams", "v", "-show_entries",
             "stream=width,height", "-of", "csv=p=0", path],
            check=True, capture_output=True, text=True).stdout.strip()
        assert info == "%d,%d" % (width, height)
        frames = frames_of(path)
        assert len(frames) == made
        seconds = counts["video_packets"] / 30  # the media time, shed frames or not
        measured = sum(f[2] for f in frames) * 8 / seconds
        # Never over the rung's bitrate (what players' estimates rely on);
        # under it by no more than the frames left out take away (x264
        # spends their bits on the frames kept, so rather less).
        kept = made / counts["video_packets"]
        assert 0.8 * bitrate * kept <= measured <= 1.2 * bitrate, (name, measured, kept)
        keys = [f[0] for f in frames if f[1]]
        assert keys == [float(k) for k in range(len(keys))], keys
    for name in LADDER:
        assert [round(s, 3) for s in starts[name]] == [round(s, 3) for s in starts["720p"]]
        assert all(abs(s - i) <= 1 / 30 for i, s in enumerate(starts[name]))
    # AAC's 1024-sample frames do not tile a second: each audio segment
    # starts on the first frame at or after the video's boundary.
    for video_start, audio_start in zip(starts["720p"], starts["audio"]):
        assert 0 <= audio_start - video_start < 1024 / 48000 + 0.001, (video_start, audio_start)

    # The static manifest replays from the first to the last frame.
    out, err, code = yield run(
        tool("ffprobe"), "-v", "error", "-count_frames", "-select_streams", "v:0",
        "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0",
        encoder.base + "/live/show/manifest.mpd")
    assert code == 0, err.decode()[-2000:]
    assert int(out.decode().strip().splitlines()[0]) == made
    # HLS: the master playlist plays.
    out, err, code = yield run(
        tool("ffmpeg"), "-v", "error", "-i", encoder.base + "/live/show/master.m3u8", "-map", "0:v:0",
        "-f", "null", "-")
    assert code == 0, err.decode()[-2000:]
    response, playlist = yield get(encoder.base + "/live/show/720p/playlist.m3u8")
    assert b"#EXT-X-ENDLIST" in playlist and b'#EXT-X-MAP:URI="init.mp4"' in playlist
    assert b"#EXT-X-PROGRAM-DATE-TIME:" in playlist
    # And the archive is on disk.
    assert os.path.exists(os.path.join(encoder.record_dir, "show", "state.json"))
    # The availability lag was measured for (nearly) every segment; the
    # ended stream's series are gone from /metrics.
    assert len(encoder.service.encoder.encoders["show"].lags) >= 8
    response, metrics = yield get(encoder.base + "/metrics")
    assert b'stream="show"' not in metrics, [line for line in metrics.splitlines() if b'stream="show"' in line]


@pytest_twisted.inlineCallbacks
def test_ffmpeg_publish_survives_an_encoder_restart(tmp_path, source_flv):
    """The ffmpeg tool publishes; after the encoder restarts, the archive replays it."""
    archive = tmp_path / "archive"
    first = start_encoder(archive)
    try:
        started = first.tallies.wait_for("ff")
        out, err, code = yield run(
            tool("ffmpeg"), "-hide_banner", "-loglevel", "error", "-re", "-i", source_flv,
            "-c", "copy", "-f", "flv", first.url("ff"))
        assert code == 0, err.decode()[-2000:]
        tally = yield started
        yield tally.done
        yield sleep(1)
        made = 300 - first.service.encoder.encoders["ff"].transcoder.frames_shed  # as above
    finally:
        yield first.service.stopService()
    second = start_encoder(archive)
    try:
        response, body = yield get(second.base + "/live/ff/manifest.mpd")
        assert response.code == 200 and b'type="static"' in body
        response, init = yield get(second.base + "/live/ff/360p/init.mp4")
        assert response.code == 200 and init[4:8] == b"ftyp"
        out, err, code = yield run(
            tool("ffprobe"), "-v", "error", "-count_frames", "-select_streams", "v:0",
            "-show_entries", "stream=nb_read_frames,width", "-of", "csv=p=0",
            second.base + "/live/ff/manifest.mpd")
        assert code == 0, err.decode()[-2000:]
        width, frames = out.decode().strip().splitlines()[0].split(",")
        assert (width, int(frames)) == ("640", made)
        response, playlist = yield get(second.base + "/live/ff/240p/playlist.m3u8")
        assert playlist.count(b"#EXTINF:") == 10 and b"#EXT-X-ENDLIST" in playlist
    finally:
        yield second.service.stopService()


class Unread(Protocol):
    """Asks for a path over HTTP/1.0 (the body ends with the connection), then does not read."""

    #: A TCP transport: a push producer too, which the test pauses.
    transport: Any

    def __init__(self, path):
        self.path = path
        self.received = b""
        self.closed: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self):
        self.transport.write(b"GET %s HTTP/1.0\r\nHost: encoder\r\n\r\n" % (self.path,))
        self.transport.pauseProducing()

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed.callback(None)


def unread_client(port, path):
    """An :class:`Unread` on a socket whose receive buffer is as small as the kernel allows."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # before connect: the window is this small
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    protocol = Unread(path)
    factory: ServerFactory = ServerFactory()
    factory.protocol = lambda: protocol
    cast(IReactorSocket, reactor).adoptStreamConnection(sock.fileno(), socket.AF_INET, factory)
    sock.close()  # the reactor has its own descriptor of it
    return protocol


def cap_send_buffers(port_number, size=16384):
    """
    Cap the kernel's send buffer of the connections a listener accepts (they
    inherit the listener's): on loopback Linux grows it to 4 MB, which
    swallows a whole segment before the server's own queue holds a byte of
    it; a real link's holds about its bandwidth-delay product.
    """
    [port] = [r for r in reactor.getReaders() if isinstance(r, tcp.Port) and r.getHost().port == port_number]
    port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def buffered(transport):
    """Bytes the reactor holds for a connection: what its TCP transport has not yet handed the kernel."""
    while not hasattr(transport, "dataBuffer"):  # the connection limiter wraps it
        transport = transport.transport
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


@pytest.fixture
def fat_encoder(tmp_path):
    """An encoder of one rendition, 720p at 8 Mbps made cheaply: segments near a megabyte."""
    role = start_encoder(tmp_path / "archive", 'encoder.ladder=["720:8000"]', "encoder.preset=ultrafast")
    yield role
    pytest_twisted.blockon(defer.maybeDeferred(role.service.stopService))


@pytest_twisted.inlineCallbacks
def test_a_client_that_stops_reading_a_growing_segment_is_paused(fat_encoder):
    encoder = fat_encoder
    publishing = pyav_publish(encoder.url("slow"), "--duration", "10", "--size", "1280x720")
    yield wait_for_manifest(encoder.base, "slow")
    live = encoder.service.site.resource.children[b"live"]
    # The segment after the one being cut: both viewers wait for it, then
    # are streamed it as it grows.
    response, playlist = yield get(encoder.base + "/live/slow/720p/playlist.m3u8")
    growing, _ = preload_hint(playlist)
    path = b"/live/slow/720p/%d.m4s" % (growing + 1,)
    cap_send_buffers(encoder.http_port)
    slow = unread_client(encoder.http_port, path)
    answers = yield defer.gatherResults([get(encoder.base + path.decode()) for _ in range(3)])
    # The readers had all of it, at their own pace, while the other did not
    # read: several times what the encoder may hold for one viewer.
    assert len({body for _, body in answers}) == 1
    response, whole = answers[0]
    assert response.code == 200 and len(whole) > 8 * MAX_WRITE
    assert header(response, "x-fbstream-segment") == b"growing"
    [producer] = live.streaming  # the unread one's, still waiting to send the rest
    assert producer.paused
    assert producer.written < len(whole)
    # What the encoder holds for it is its transport's bound and one write,
    # not the rest of the segment.
    assert buffered(producer.request.channel.transport) <= 2 * MAX_WRITE + 4096
    # Once it reads, it gets the rest from where it was.
    slow.transport.resumeProducing()
    yield slow.closed
    head, _, body = slow.received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") and body == whole
    assert live.streaming == set()
    yield publishing
