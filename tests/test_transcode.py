"""
The transcoder on real inputs (PyAV and the ffmpeg tool make the sources, as
FLV files; the transcoder decodes and encodes them for real), including the
odd ones: no audio, audio only, long and short GOPs, B-frames, a resolution
change, 1080p60, a 240p source, an unsupported codec, corrupt frames.
"""

from __future__ import annotations

import collections
import shutil
import subprocess

import pytest

from fbstream.demo import publish
from fbstream.encoder.fmp4 import boxes
from fbstream.encoder.ladder import DEFAULT_RUNGS, parse_rungs, plan
from fbstream.encoder.transcode import (
    Chunk, InitSegment, Refused, SegmentEnd, Transcoder, TranscoderSettings,
)
from fbstream.live.hub import MediaMessage
from fbstream.rtmp import flv


def source(tmp_path, name, **kw):
    path = str(tmp_path / (name + ".flv"))
    publish(path, kw.pop("duration", 3), realtime=False, **kw)
    with open(path, "rb") as f:
        return [MediaMessage(t, ts, p) for t, ts, p in flv.read_file(f.read()) if t in (8, 9)]


def transcode(messages, rungs=DEFAULT_RUNGS):
    tx = Transcoder(TranscoderSettings(parse_rungs(list(rungs))))
    out = []
    for message in messages:
        out += tx.feed(message)
    out += tx.finish()
    return tx, out


def summary(out):
    inits = {o.info.name: o.info for o in out if isinstance(o, InitSegment)}
    ends = collections.defaultdict(list)
    for o in out:
        if isinstance(o, SegmentEnd):
            ends[o.rendition].append(o)
    return inits, ends


def test_ladder_never_upscales():
    rungs = parse_rungs(list(DEFAULT_RUNGS))
    assert [r.name for r in plan(1920, 1080, rungs)] == ["720p", "480p", "360p", "240p"]
    assert [(r.width, r.height) for r in plan(1280, 720, rungs)][1] == (854, 480)
    assert [r.name for r in plan(426, 240, rungs)] == ["240p"]
    assert [(r.width, r.height) for r in plan(320, 180, rungs)] == [(320, 180)]
    with pytest.raises(ValueError):
        parse_rungs(["720p"])


def test_no_audio(tmp_path):
    tx, out = transcode(source(tmp_path, "noaudio", size="426x240", audio=False))
    inits, ends = summary(out)
    assert set(inits) == {"240p"}
    assert [e.frames for e in ends["240p"]] == [30, 30, 30]


def test_audio_only(tmp_path):
    path = str(tmp_path / "audio.flv")
    subprocess.run([shutil.which("ffmpeg"), "-v", "error", "-f", "lavfi", "-i", "sine=sample_rate=44100",
                    "-t", "3", "-c:a", "aac", "-f", "flv", path], check=True)
    with open(path, "rb") as f:
        messages = [MediaMessage(t, ts, p) for t, ts, p in flv.read_file(f.read()) if t == 8]
    tx, out = transcode(messages)
    inits, ends = summary(out)
    assert set(inits) == {"audio"}
    assert [e.number for e in ends["audio"]][:3] == [1, 2, 3]
    assert all(45 <= e.frames <= 48 for e in ends["audio"][:3])


@pytest.mark.parametrize("gop", [60, 300])
def test_any_source_gop_gives_a_keyframe_every_second(tmp_path, gop):
    tx, out = transcode(source(tmp_path, "gop", size="426x240", gop=gop, audio=False, duration=4))
    inits, ends = summary(out)
    assert [e.frames for e in ends["240p"]] == [30, 30, 30, 30]
    for o in out:
        if isinstance(o, Chunk) and o.data is not None:
            assert [b[0] for b in boxes(o.data)] == [b"moof", b"mdat"]


def test_b_frames(tmp_path):
    tx, out = transcode(source(tmp_path, "bframes", size="640x360", bframes=2, duration=3))
    inits, ends = summary(out)
    assert set(inits) == {"360p", "240p", "audio"}
    assert [e.frames for e in ends["360p"]] == [30, 30, 30]
    assert tx.decode_errors == 0


def test_resolution_change_mid_stream(tmp_path):
    first = source(tmp_path, "a", size="426x240", duration=2, audio=False)
    second = source(tmp_path, "b", size="640x360", duration=2, audio=False)
    shift = first[-1].timestamp + 33
    messages = first + [MediaMessage(m.type_id, m.timestamp + shift, m.payload) for m in second]
    tx, out = transcode(messages)
    inits, ends = summary(out)
    assert set(inits) == {"240p"}  # the renditions chosen at the start stay
    assert sum(e.frames for e in ends["240p"]) == 120
    assert not [o for o in out if isinstance(o, Refused)]


def test_1080p60(tmp_path):
    tx, out = transcode(source(tmp_path, "hd", size="1920x1080", rate=60, gop=120, duration=2))
    inits, ends = summary(out)
    assert set(inits) == {"720p", "480p", "360p", "240p", "audio"}
    assert [e.frames for e in ends["720p"]] == [60, 60]
    assert inits["720p"].width == 1280


def test_frame_rate_from_metadata_reaches_the_manifests(tmp_path):
    from fbstream.encoder.store import LiveVideo
    from fbstream.encoder.worker import StreamEncoder
    from fbstream.rtmp import amf0
    from twisted.internet.testing import MemoryReactorClock

    tx = Transcoder(TranscoderSettings(parse_rungs(list(DEFAULT_RUNGS))))
    worker = StreamEncoder(LiveVideo("s", 0, 120, None), tx, None, MemoryReactorClock(), None, 3000, print)
    worker._busy = True  # nothing runs: only the metadata is looked at
    worker.media(MediaMessage(18, 0, amf0.encode("onMetaData", amf0.ECMAArray({"framerate": 60.0}))))
    assert tx.frame_rate == 60.0


def test_hevc_is_refused_clearly():
    tx = Transcoder(TranscoderSettings(parse_rungs(list(DEFAULT_RUNGS))))
    out = tx.feed(MediaMessage(9, 0, b"\x90hvc1\x01\x02\x03"))
    assert out == [Refused("video codec 'hvc1' cannot be transcoded (only H.264)")]
    assert tx.feed(MediaMessage(9, 0, b"\x91hvc1\x00\x00\x00x")) == []


def test_corrupt_frames_are_survived(tmp_path):
    messages = source(tmp_path, "ok", size="426x240", audio=False, duration=2)
    broken = []
    for i, m in enumerate(messages):
        if i % 7 == 3 and not flv.parse_video(m.payload).sequence_header:
            m = MediaMessage(m.type_id, m.timestamp, m.payload[:5] + b"\x00\x00\x00\x10" + bytes(range(16)) * 3)
        broken.append(m)
    tx, out = transcode(broken)
    inits, ends = summary(out)
    assert ends["240p"], "still produces segments"
    assert not [o for o in out if isinstance(o, Refused)]
