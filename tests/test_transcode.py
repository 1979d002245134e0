"""
The transcoder on real inputs (PyAV and the ffmpeg tool make the sources, as
FLV files; the transcoder decodes and encodes them for real), including the
odd ones: no audio, audio only, long and short GOPs, B-frames, a resolution
change, 1080p60, a 240p source, an unsupported codec, corrupt frames.
"""

from __future__ import annotations

import collections
import subprocess

import pytest

from fbstream.demo import publish
from fbstream.encoder.fmp4 import boxes, decode_time, duration, sample_count, timescale
from fbstream.encoder.ladder import DEFAULT_RUNGS, parse_rungs, plan
from fbstream.encoder.transcode import (
    Chunk,
    InitSegment,
    Refused,
    SegmentClock,
    SegmentEnd,
    Transcoder,
    TranscoderSettings,
)
from fbstream.media import MediaMessage
from fbstream.rtmp import flv


def source(tmp_path, name, **kw):
    path = str(tmp_path / (name + ".flv"))
    publish(path, kw.pop("duration", 3), realtime=False, **kw)
    with open(path, "rb") as f:
        return [MediaMessage(t, ts, p) for t, ts, p in flv.read_file(f.read()) if t in (8, 9)]


def transcode(messages, rungs=DEFAULT_RUNGS, clock=None, resume_ms=None, shedding=0):
    tx = Transcoder(TranscoderSettings(parse_rungs(list(rungs))), clock=clock, resume_ms=resume_ms)
    tx.shedding = shedding
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


def test_a_reconnect_goes_on_from_its_clock(tmp_path):
    """After a reconnect, numbers go on and media time is the period's start (presentation time)."""
    tx, out = transcode(source(tmp_path, "again", size="426x240", duration=3), clock=SegmentClock(19, 20_011))
    inits, ends = summary(out)
    for name in ("240p", "audio"):
        assert [e.number for e in ends[name]] == [19, 20, 21], name
        assert [e.start_ms for e in ends[name]] == [20_011, 21_011, 22_011], name
    assert [e.frames for e in ends["240p"]] == [30, 30, 30]
    # The first video segment starts exactly at the period: its first
    # fragment's decode time, in the track's timescale, is the base.
    first = next(o.data for o in out if isinstance(o, Chunk) and o.rendition == "240p" and o.number == 19)
    init = next(o.data for o in out if isinstance(o, InitSegment) and o.info.name == "240p")
    assert decode_time(first) == 20_011 * timescale(init) // 1000


def ffmpeg_source(tmp_path, name):
    """Three seconds from the ffmpeg tool: 426x240 H.264, mono AAC at 44.1 kHz."""
    path = str(tmp_path / (name + ".flv"))
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=426x240:rate=30",
                    "-f", "lavfi", "-i", "sine=frequency=330", "-t", "3", "-c:v", "libx264", "-g", "60",
                    "-c:a", "aac", "-f", "flv", path], check=True)
    with open(path, "rb") as f:
        return [MediaMessage(t, ts, p) for t, ts, p in flv.read_file(f.read()) if t in (8, 9)]


@pytest.mark.parametrize("made_by", ["pyav", "ffmpeg"])
def test_the_time_away_is_a_slate(tmp_path, made_by):
    """The broadcaster was away from 17.3 s to 20.011 s: the period opens with a still and silence."""
    messages = (source(tmp_path, "back", size="426x240", duration=3) if made_by == "pyav"
                else ffmpeg_source(tmp_path, "back"))  # stereo at 48 kHz; mono at 44.1 kHz
    tx, out = transcode(messages, clock=SegmentClock(19, 17_300), resume_ms=20_011)
    assert not [o for o in out if isinstance(o, Refused)]
    inits, ends = summary(out)
    video = {e.number: e for e in ends["240p"]}
    assert list(video)[:4] == [19, 20, 21, 22]
    assert [video[n].start_ms for n in (19, 20, 21, 22)] == [17_300, 18_300, 19_300, 20_300]
    # One still keyframe per slate segment; the source's frames from 20.011 s.
    assert video[19].frames == video[20].frames == 1
    data = b"".join(o.data for o in out if isinstance(o, Chunk) and o.rendition == "240p" and o.number == 21)
    assert sample_count(data) == video[21].frames
    assert 1 + 8 <= video[21].frames <= 1 + 10, video[21]
    assert sum(e.frames for e in ends["240p"]) == 2 + 1 + 90
    # Audio is continuous from the period's start: silence, then the source.
    audio = [e for e in ends["audio"]]
    assert audio[0].number == 19 and audio[0].start_ms == 17_300
    assert all(a.start_ms + a.duration_ms == b.start_ms for a, b in zip(audio, audio[1:]))
    assert audio[-1].start_ms + audio[-1].duration_ms >= 22_900


def test_no_audio(tmp_path):
    tx, out = transcode(source(tmp_path, "noaudio", size="426x240", audio=False))
    inits, ends = summary(out)
    assert set(inits) == {"240p"}
    assert [e.frames for e in ends["240p"]] == [30, 30, 30]


def test_audio_only(tmp_path):
    path = str(tmp_path / "audio.flv")
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=sample_rate=44100",
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
    from tests.test_record import InlineReactor, StepPool

    tx = Transcoder(TranscoderSettings(parse_rungs(list(DEFAULT_RUNGS))))
    reactor = InlineReactor()
    worker = StreamEncoder(LiveVideo("s", 0, 120, None, reactor), tx, StepPool(), reactor, None, 3000, print)
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


def test_audio_that_changes_format_midstream_is_survived(tmp_path):
    """Mono at 44.1 kHz, then stereo at 48 kHz: PyAV's resampler would crash the process; ours goes on."""
    parts = []
    for name, layout, rate in (("mono", "mono", 44100), ("stereo", "stereo", 48000)):
        path = str(tmp_path / (name + ".flv"))
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                        "sine=sample_rate=%d" % (rate,), "-ac", "1" if layout == "mono" else "2",
                        "-t", "2", "-c:a", "aac", "-f", "flv", path], check=True)
        with open(path, "rb") as f:
            parts.append([MediaMessage(t, ts, p) for t, ts, p in flv.read_file(f.read()) if t == 8])
    shift = parts[0][-1].timestamp + 23
    messages = parts[0] + [MediaMessage(m.type_id, m.timestamp + shift, m.payload) for m in parts[1]]
    tx, out = transcode(messages)
    inits, ends = summary(out)
    assert sum(e.duration_ms for e in ends["audio"]) >= 3900


def test_video_dropped_while_behind_leaves_no_hole(tmp_path):
    # What the worker does past its backlog bound: video from 1.2 s to just
    # before the keyframe at 4 s never reaches the transcoder. Segment 3 has
    # no source frame at all; the last picture stands in for it.
    messages = source(tmp_path, "gap", duration=6, gop=60, size="320x240", audio=False)
    kept = [m for m in messages if not (1200 <= m.timestamp < 4000) or flv.parse_video(m.payload).sequence_header]
    tx, out = transcode(kept, rungs=["240:300"])
    inits, ends = summary(out)
    assert [e.number for e in ends["240p"]] == [1, 2, 3, 4, 5, 6]
    assert [e.start_ms for e in ends["240p"]] == [0, 1000, 2000, 3000, 4000, 5000]
    assert [e.frames for e in ends["240p"]][1:3] == [6, 1]


@pytest.mark.parametrize("level", [1, 3])
def test_shedding_leaves_frames_out_but_keeps_every_segment_start(tmp_path, level):
    messages = source(tmp_path, "shed", duration=4, gop=60, size="320x240", audio=False)
    tx, out = transcode(messages, rungs=["240:300"], shedding=level)
    ends = summary(out)[1]["240p"]
    assert [e.number for e in ends] == [1, 2, 3, 4]
    # 30 frames a second in, one in level + 1 out (15, or 8): each segment
    # still starts on a keyframe.
    kept = 30 / (level + 1)
    assert all(kept - 1 <= e.frames <= kept + 1 for e in ends), [e.frames for e in ends]
    assert tx.frames_shed >= 4 * (30 - kept) - 5
    chunks = collections.defaultdict(list)
    for o in out:
        if isinstance(o, Chunk):
            chunks[o.number].append(o.data)
    for number, data in chunks.items():
        assert decode_time(data[0]) * 1000 // 16000 == (number - 1) * 1000


def test_stills_last_until_the_next_picture(tmp_path):
    # A slate segment is one still keyframe: it must last the whole second
    # (players treat a hole in the buffer as a stall, or a fatal error).
    messages = source(tmp_path, "still", duration=3, size="320x240", audio=False)
    tx, out = transcode(messages, rungs=["240:300"], clock=SegmentClock(5, 4000), resume_ms=6000)
    data: collections.defaultdict[int, bytes] = collections.defaultdict(bytes)
    for o in out:
        if isinstance(o, Chunk):
            data[o.number] += o.data
    from fbstream.encoder.fmp4 import chunks_of, duration

    for number in (5, 6, 7, 8):
        played = sum(duration(chunk) for chunk in chunks_of(data[number]))
        assert abs(played - 16000) <= 16, (number, played)


def test_a_timestamp_jump_is_a_new_timeline_not_hours_of_slate(tmp_path):
    """
    A reconnecting publisher (a token is all it takes) sends an audio frame
    stamped 0x7FFFFFFF, 24 days on: the slate and the stills must not be
    sized by it. The jump starts a new timeline where the old one was.
    """
    messages = source(tmp_path, "jump", size="426x240", duration=2)
    first_audio = next(m for m in messages if m.type_id == 8 and m.payload[1:2] == b"\x01")
    hostile = MediaMessage(8, 0x7FFFFFFF, first_audio.payload)
    later = [MediaMessage(m.type_id, (m.timestamp + 0x7FFFFFFF + 40) & 0xFFFFFFFF, m.payload)
             for m in messages[len(messages) // 2:] if m.type_id == 8 or m.payload[1:2] == b"\x01"]
    tx, out = transcode(messages[: len(messages) // 2] + [hostile] + later,
                        clock=SegmentClock(19, 17_300), resume_ms=20_011)
    assert tx.timeline_resets >= 1
    inits, ends = summary(out)
    numbers = [e.number for e in ends["240p"]] + [e.number for e in ends["audio"]]
    # About 3 s away (the slate) plus 2 s of source: a handful of segments, not 2 million.
    assert max(numbers) <= 19 + 10, max(numbers)


def test_audio_a_reconnect_stamps_24_days_ahead_is_bounded_work(tmp_path):
    """The same, from the reconnect's first audio on: every audio frame 0x7FFFFFFF ms ahead of the video."""
    messages = source(tmp_path, "skewed", size="426x240", duration=2)
    skewed = [MediaMessage(m.type_id, (m.timestamp + 0x7FFFFFFF) & 0xFFFFFFFF, m.payload) if m.type_id == 8 else m
              for m in messages]
    tx, out = transcode(skewed, clock=SegmentClock(19, 17_300), resume_ms=20_011)
    assert tx.timeline_resets >= 1
    inits, ends = summary(out)
    numbers = [e.number for e in ends["240p"]] + [e.number for e in ends["audio"]]
    assert max(numbers) <= 19 + 10, max(numbers)


def part_durations(out, rendition):
    """Each segment's part durations in seconds, from the chunks' own ``trun`` s."""
    scale = {o.info.name: timescale(o.data) for o in out if isinstance(o, InitSegment)}[rendition]
    parts = collections.defaultdict(list)
    for o in out:
        if isinstance(o, Chunk) and o.rendition == rendition:
            parts[o.number].append(duration(o.data) / scale)
    return parts


@pytest.mark.parametrize("shedding", [0, 1, 3], ids=["every-frame", "half", "a-quarter"])
def test_no_segment_ends_on_a_short_part(tmp_path, shedding):
    # hls.js counts a segment buffered when what is missing of it is shorter
    # than its 0.2 s buffer padding, and then never loads the last part: a
    # stall. So part k ends by k·chunk_ms into its segment, and the last
    # part lasts at least chunk_ms, whether or not the encoder sheds frames.
    messages = source(tmp_path, "parts", duration=4, gop=60, size="320x240")
    _, out = transcode(messages, rungs=["240:300"], shedding=shedding)
    ends = {e.number: e for e in out if isinstance(e, SegmentEnd) and e.rendition == "240p"}
    for rendition in ("240p", "audio"):
        parts = part_durations(out, rendition)
        for number, durations in parts.items():
            if number == max(parts) or number not in ends:
                continue  # the stream's end cuts its last segment short
            assert len(durations) >= 3, (rendition, number, durations)
            ends_of_parts = [sum(durations[: i + 1]) for i in range(len(durations) - 1)]
            assert all(end <= 0.25 * (i + 1) + 1e-6 for i, end in enumerate(ends_of_parts)), (rendition, number, durations)
            assert durations[-1] >= 0.25 - 1e-6, (rendition, number, durations)
