"""
The transcoder of one live stream: RTMP media messages in, CMAF segments out.

It runs in a worker thread, never on the reactor, and touches no reactor: feed
it :class:`~fbstream.media.MediaMessage` s and it returns what they produced
(init segments, chunks of the segment being made, segment ends).

How segments are cut: media time starts at the stream's first coded message
and segment *n* covers ``[(n-1)·d, n·d)``. Each rendition has one persistent
encoder (libx264 with a zerolatency configuration, or AAC). A video frame that
starts a new segment is forced to be an IDR frame in every rendition, so the
segments of all renditions are aligned and each starts with a keyframe whatever
GOP the broadcaster sends. A segment is written a part at a time (a fragment,
``moof``+``mdat``, a "chunk", an LL-HLS part, about every ``chunk_ms``), so it
can be delivered while it grows: each part by its own short-lived PyAV mp4
muxer with ``frag_discont``, so its fragment carries its absolute decode time,
closed the moment the next part's first frame arrives, which writes it at once.
"""

from __future__ import annotations

import io
import time
from fractions import Fraction
from typing import Any

import attrs

from fbstream.encoder.fmp4 import FragmentSplitter
from fbstream.encoder.ladder import Rung, VideoRendition, plan
from fbstream.media import MediaMessage
from fbstream.rtmp import flv
from fbstream.rtmp.messages import AUDIO, VIDEO

MS = Fraction(1, 1000)
#: Segment duration; the MPD's SegmentTemplate@duration.
SEGMENT_MS = 1000
#: Two messages of one publisher whose timestamps are further apart than this
#: start a new timeline (rtmp.idle_timeout drops one silent for 30 s).
MAX_TIMESTAMP_JUMP_MS = 60_000
#: Where the first message of a new timeline goes: just after the last one.
TIMELINE_STEP_MS = 20
AUDIO_RATE = 48000
AUDIO_NAME = "audio"


@attrs.frozen
class SegmentClock:
    """
    Which segment a media time falls in: segment ``first_number`` starts at
    media time ``base_ms``, and each lasts ``segment_ms`` (the MPD's
    ``startNumber``, ``presentationTimeOffset`` and ``@duration``).
    """

    first_number: int = 1
    base_ms: int = 0
    segment_ms: int = SEGMENT_MS

    def number_at(self, media_ms: int) -> int:
        return self.first_number + max(0, media_ms - self.base_ms) // self.segment_ms

    def start_of(self, number: int) -> int:
        return self.base_ms + (number - self.first_number) * self.segment_ms


# What a transcoder produces ------------------------------------------------


@attrs.frozen
class RenditionInfo:
    name: str
    kind: str  # "video" or "audio"
    codecs: str
    bandwidth: int
    width: int = 0
    height: int = 0
    frame_rate: str = ""
    sample_rate: int = 0
    timescale: int = 1000


@attrs.frozen
class InitSegment:
    info: RenditionInfo
    data: bytes


@attrs.frozen
class Chunk:
    rendition: str
    number: int
    data: bytes


@attrs.frozen
class SegmentEnd:
    rendition: str
    number: int
    start_ms: int
    duration_ms: int
    frames: int
    #: The RTMP presentation timestamp of the segment's last frame (video).
    last_source_pts: int = -1


@attrs.frozen
class Notice:
    """Something an operator should hear about (a drop, a refused input)."""

    level: str  # "warn" or "error"
    message: str


@attrs.frozen
class Refused:
    """The input cannot be transcoded; the stream must stop."""

    reason: str


Output = InitSegment | Chunk | SegmentEnd | Notice | Refused


# Muxing --------------------------------------------------------------------


class _Sink(io.RawIOBase):
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data: Any) -> int:
        self.written.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self.written)
        self.written = []
        return data


MUX_OPTIONS = {
    "movflags": "frag_keyframe+empty_moov+default_base_moof+skip_trailer+frag_discont",
    "use_editlist": "0",
    "avoid_negative_ts": "disabled",
}


class _SegmentMuxer:
    """
    One segment of one rendition, written a part (a CMAF chunk, one
    ``moof``+``mdat``) at a time, each part by its own short-lived mp4 muxer.

    We choose where parts are cut rather than libavformat's ``frag_duration``,
    which cuts at the first frame at or past ``chunk_ms`` from the part's
    start and leaves whatever remains for the last part: 0.2 s at 30 fps, and
    less when the encoder sheds frames under load. A last part shorter than
    hls.js's 0.2 s buffer padding gets the segment counted as buffered
    without it when the playlist completing the segment arrives while the
    part before is loading, and hls.js never asks for it: a stall on the hole.
    So part *k* ends before the frame that reaches past ``start + k·chunk_ms``,
    and the last part lasts at least ``chunk_ms``.
    """

    def __init__(self, template: Any, chunk_ms: int, start_ms: int, segment_ms: int = SEGMENT_MS) -> None:
        self.template = template
        self.splitter = FragmentSplitter()
        ticks = template.time_base
        self.step = int(Fraction(chunk_ms, 1000) / ticks)
        self.cut_at = int(Fraction(start_ms, 1000) / ticks) + self.step
        #: No cut leaves less than a whole chunk_ms after it (a 300 ms chunk
        #: makes parts of 0.3, 0.3 and 0.4 s).
        self.last_cut = int(Fraction(start_ms + segment_ms, 1000) / ticks) - self.step
        self.parts = 0
        self.sink = _Sink()
        self.container: Any = None
        self.stream: Any = None

    def mux(self, packet: Any) -> list[bytes]:
        """Mux ``packet``, whose ``duration`` is known; returns the parts it completed."""
        chunks: list[bytes] = []
        start = int(packet.pts)
        if self.container is not None and self.cut_at <= self.last_cut and start + int(packet.duration or 0) > self.cut_at:
            chunks = self._cut()
            self.cut_at += self.step
            while self.cut_at <= start:
                self.cut_at += self.step  # past a gap
        if self.container is None:
            self._open()
        packet.stream = self.stream
        self.container.mux(packet)
        return chunks + self.splitter.feed(self.sink.take())

    def close(self) -> list[bytes]:
        return self._cut() if self.container is not None else []

    def _open(self) -> None:
        import av

        self.parts += 1
        options = dict(MUX_OPTIONS, fragment_index=str(self.parts))
        self.container = av.open(self.sink, "w", format="mp4", options=options)
        self.stream = self.container.add_stream_from_template(self.template)
        self.stream.time_base = self.template.time_base
        self.stream.codec_context.extradata = self.template.codec_context.extradata

    def _cut(self) -> list[bytes]:
        self.container.close()
        self.container = self.stream = None
        return self.splitter.feed(self.sink.take())


class _Rendition:
    """State shared by video and audio renditions: the segment being written."""

    def __init__(self, name: str, template: Any, chunk_ms: int) -> None:
        self.name = name
        self.template = template
        self.chunk_ms = chunk_ms
        self.muxer: _SegmentMuxer | None = None
        self.number = 0
        self.start_ms = 0
        self.last_ms = 0
        self.frames = 0
        self.init_sent = False
        self.info: RenditionInfo | None = None
        self.last_source_pts = -1

    def _roll(self, number: int, start_ms: int, out: list[Output]) -> None:
        self._close(start_ms, out)
        self.muxer = _SegmentMuxer(self.template, self.chunk_ms, start_ms)
        self.number = number
        self.start_ms = start_ms
        self.frames = 0

    def _close(self, end_ms: int, out: list[Output]) -> None:
        if self.muxer is None:
            return
        chunks = self.muxer.close()
        self._emit(chunks, out)
        out.append(SegmentEnd(self.name, self.number, self.start_ms, end_ms - self.start_ms,
                              self.frames, self.last_source_pts))
        self.muxer = None

    def _emit(self, chunks: list[bytes], out: list[Output]) -> None:
        assert self.muxer is not None
        if not self.init_sent and self.muxer.splitter.init is not None:
            assert self.info is not None
            out.append(InitSegment(self.info, self.muxer.splitter.init))
            self.init_sent = True
        for data in chunks:
            out.append(Chunk(self.name, self.number, data))

    def mux(self, packet: Any, out: list[Output]) -> None:
        assert self.muxer is not None
        self._emit(self.muxer.mux(packet), out)


class _VideoRendition(_Rendition):
    def __init__(self, spec: VideoRendition, rate: Fraction, preset: str, chunk_ms: int) -> None:
        import av
        import av.video.reformatter

        holder = av.open(io.BytesIO(), "w", format="mp4")
        stream = holder.add_stream("libx264", rate=rate)
        stream.width = spec.width
        stream.height = spec.height
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = spec.bitrate
        stream.time_base = MS
        ctx = stream.codec_context
        # Millisecond timestamps, whatever the frame rate (a 1/rate time base
        # would round a 60 fps or variable-rate source's stamps together).
        ctx.time_base = MS
        ctx.gop_size = 100000  # keyframes only where we force them
        ctx.max_b_frames = 0
        ctx.options = {
            "preset": preset,
            "tune": "zerolatency",
            "forced-idr": "1",
            # Two frame threads rather than zerolatency's slices: a frame
            # later out, but on a busy machine a sliced frame waits for its
            # slowest slice thread, and the ladder falls behind real time.
            "x264-params": "scenecut=0:vbv-maxrate=%d:vbv-bufsize=%d:nal-hrd=none:sliced-threads=0:threads=2"
            % (spec.bitrate * 12 // 10000, spec.bitrate // 1000),
        }
        ctx.open()
        super().__init__(spec.name, stream, chunk_ms)
        self.holder = holder
        self.spec = spec
        #: The last picture encoded, to stand in for video that never came.
        self.last_frame: Any = None
        self.clock = SegmentClock()
        #: The segment whose first frame was forced to be an IDR frame last.
        self._forced = 0
        #: Media time -> the source's RTMP timestamp, for frames in the encoder.
        self._source_pts: dict[int, int] = {}
        #: The newest packet, muxed when the next one says how long it lasts.
        self._held: Any = None
        # One scaler per rendition, kept: swscale reuses its context (a fresh
        # one per frame costs three times as much CPU).
        self.reformatter = av.video.reformatter.VideoReformatter()
        self.info = RenditionInfo(
            spec.name,
            "video",
            _avc_codecs(bytes(ctx.extradata or b"")),
            spec.bitrate,
            spec.width,
            spec.height,
            _rate_string(rate),
            timescale=1000,
        )

    def encode(self, frame: Any, media_ms: int, clock: SegmentClock, source_pts: int, out: list[Output]) -> None:
        from av.video.frame import PictureType

        self.clock = clock
        number = clock.number_at(media_ms)
        if number != self._forced:
            # The first frame of a segment is an IDR frame in every rendition.
            self._forced = number
            frame.pict_type = PictureType.I
        else:
            frame.pict_type = PictureType.NONE
        frame.pts = media_ms
        frame.time_base = MS
        self._source_pts[media_ms] = source_pts
        for packet in self.template.encode(frame):
            self._packet(packet, out)

    def _packet(self, packet: Any, out: list[Output]) -> None:
        """
        Mux one packet into the segment its timestamp falls in. x264's frame
        threads hand a packet back a frame after its frame went in, so the
        segment rolls on the packet, not on the frame. Each packet is muxed
        once the next one is known, lasting until it: a picture followed by
        a gap (a still standing in for missing video, the slate) covers the
        gap rather than leaving a hole in the players' buffers.
        """
        pts = int(packet.pts)
        number = self.clock.number_at(pts)
        self._mux_held(self.clock.start_of(number) if number != self.number else pts, out)
        if number != self.number:
            self._roll(number, self.clock.start_of(number), out)
        self.last_ms = pts
        self.last_source_pts = self._source_pts.pop(pts, -1)
        if len(self._source_pts) > 64:
            self._source_pts.clear()  # a frame the encoder never returned
        self.frames += 1
        self._held = packet

    def _mux_held(self, until_ms: int, out: list[Output]) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.duration = max(1, until_ms - int(held.pts))
            self.mux(held, out)

    def finish(self, end_ms: int, out: list[Output]) -> None:
        if self.muxer is not None or self._forced:
            for packet in self.template.encode(None):
                self._packet(packet, out)
            self._mux_held(end_ms, out)
            self._close(end_ms, out)


class _AudioRendition(_Rendition):
    def __init__(self, bitrate: int, chunk_ms: int) -> None:
        import av

        holder = av.open(io.BytesIO(), "w", format="mp4")
        stream = holder.add_stream("aac", rate=AUDIO_RATE)
        stream.layout = "stereo"
        stream.bit_rate = bitrate
        stream.time_base = Fraction(1, AUDIO_RATE)
        stream.codec_context.open()
        super().__init__(AUDIO_NAME, stream, chunk_ms)
        self.holder = holder
        self.resampler = av.AudioResampler(format="fltp", layout="stereo", rate=AUDIO_RATE)
        self.fifo = av.AudioFifo()
        self.next_sample: int | None = None
        self._input_shape: tuple[str, str, int] | None = None
        #: Segments by media time; audio before the first is dropped.
        self.clock = SegmentClock()
        self.info = RenditionInfo(
            AUDIO_NAME, "audio", "mp4a.40.2", bitrate, sample_rate=AUDIO_RATE, timescale=AUDIO_RATE
        )

    def feed(self, frame: Any, media_ms: int, out: list[Output]) -> None:
        import av

        expected = media_ms * AUDIO_RATE // 1000
        if self.next_sample is None or abs(expected - (self.next_sample + self.fifo.samples)) > AUDIO_RATE // 5:
            # First audio, or the publisher's audio clock jumped: re-anchor.
            self.fifo = av.AudioFifo()
            self.next_sample = expected
        shape = (frame.format.name, frame.layout.name, frame.sample_rate)
        if shape != self._input_shape:
            # PyAV's resampler is set up by the first frame it sees and
            # crashes the process on a different one: a source that changes
            # its audio format (mono to stereo, a new rate) gets a new one.
            if self._input_shape is not None:
                self.resampler = av.AudioResampler(format="fltp", layout="stereo", rate=AUDIO_RATE)
            self._input_shape = shape
        for resampled in self.resampler.resample(frame):
            resampled.pts = None
            resampled.time_base = Fraction(1, AUDIO_RATE)
            self.fifo.write(resampled)
        while self.fifo.samples >= 1024:
            chunk = self.fifo.read(1024)
            assert chunk is not None and self.next_sample is not None
            chunk.pts = self.next_sample
            chunk.time_base = Fraction(1, AUDIO_RATE)
            self.next_sample += 1024
            for packet in self.template.encode(chunk):
                self._packet(packet, out)

    def _packet(self, packet: Any, out: list[Output]) -> None:
        if packet.dts is None or packet.dts < 0:
            return  # the encoder's priming packet
        packet_ms = packet.pts * 1000 // AUDIO_RATE
        if packet_ms < self.clock.base_ms:
            return  # before this period's first segment (it belongs to no segment)
        number = self.clock.number_at(packet_ms)
        if number != self.number:
            self._roll(number, self.clock.start_of(number), out)
        self.frames += 1
        self.last_ms = packet_ms
        self.mux(packet, out)

    def finish(self, out: list[Output]) -> None:
        if self.next_sample is not None:
            for packet in self.template.encode(None):
                self._packet(packet, out)
        self._close(self.last_ms + 21, out)


def _avc_codecs(extradata: bytes) -> str:
    """``avc1.PPCCLL`` from an encoder's extradata (Annex B or avcC)."""
    if extradata[:1] == b"\x01" and len(extradata) >= 4:
        return "avc1.%02x%02x%02x" % (extradata[1], extradata[2], extradata[3])
    i = extradata.find(b"\x00\x00\x01\x67")
    if i >= 0 and len(extradata) >= i + 7:
        return "avc1.%02x%02x%02x" % (extradata[i + 4], extradata[i + 5], extradata[i + 6])
    return "avc1.64001f"


def _rate_string(rate: Fraction) -> str:
    return str(rate.numerator) if rate.denominator == 1 else "%d/%d" % (rate.numerator, rate.denominator)


@attrs.define
class TranscoderSettings:
    rungs: list[Rung]
    audio_bitrate: int = 64_000
    preset: str = "veryfast"
    segment_ms: int = 1000
    chunk_ms: int = 250
    #: Video codecs the decoder accepts (FLV/Enhanced RTMP names).
    video_codecs: tuple[str, ...] = ("avc1",)


class Transcoder:
    """
    Transcodes one stream. Not thread-safe: one thread at a time feeds it (the
    stream's serial worker).
    """

    def __init__(self, settings: TranscoderSettings, frame_rate: float | None = None,
                 clock: SegmentClock | None = None, renditions: list[VideoRendition] | None = None,
                 resume_ms: int | None = None) -> None:
        """
        ``clock`` continues a live video after a reconnect: its segments are
        numbered from ``clock.first_number`` and its media time starts at
        ``clock.base_ms``, where the last period's content ended. The
        source's first frame is at media time ``resume_ms`` (when the
        broadcaster came back); the time between is filled with a slate, a
        dark still frame and silence, so the presentation has no gap for a
        player to fall into. ``renditions`` keeps the video renditions the
        live video already has, whatever the size of the new source.
        """
        if settings.segment_ms != SEGMENT_MS:
            raise ValueError("only 1-second segments are supported")
        self.settings = settings
        self.clock = clock or SegmentClock()
        self.resume_ms = max(self.clock.base_ms, resume_ms if resume_ms is not None else 0)
        self.fixed_renditions = renditions
        self.frame_rate = frame_rate
        self.origin_ms: int | None = None
        #: The media time of the last message, and how often its clock jumped.
        self._last_media_ms: int | None = None
        self.timeline_resets = 0
        self.video_decoder: Any = None
        self.audio_decoder: Any = None
        self.videos: list[_VideoRendition] = []
        self.audio: _AudioRendition | None = None
        self.refused: str | None = None
        self.frames_in = 0
        self.frames_out = 0
        self.decode_errors = 0
        self.encode_seconds = 0.0
        #: Set (by the stream's worker, between batches) while the encoder
        #: is behind real time: *n* frames of every *n+1* are left out (0:
        #: none; True is 1, half the frames).
        self.shedding = 0
        self._since_kept = 0
        self.frames_shed = 0
        self._last_video_ms = 0
        #: Audio that arrived before the first video frame fixed the origin.
        self._held_audio: list[MediaMessage] = []

    def feed(self, message: MediaMessage) -> list[Output]:
        out: list[Output] = []
        if self.refused is not None:
            return out
        try:
            if message.type_id == VIDEO:
                self._video(message, out)
                if self._held_audio and self.origin_ms is not None:
                    held, self._held_audio = self._held_audio, []
                    for audio in held:
                        self._audio(audio, out)
            elif message.type_id == AUDIO:
                if self._hold(message, out):
                    return out
                self._audio(message, out)
        except _Refuse as e:
            self.refused = str(e)
            out.append(Refused(str(e)))
        return out

    def finish(self) -> list[Output]:
        """The publisher is gone: flush every encoder and close the last segments."""
        out: list[Output] = []
        if self.refused is not None:
            return out
        if self.video_decoder is not None and self.videos:
            import av

            try:
                for frame in self.video_decoder.decode(None):
                    self._encode_frame(frame, out)
            except av.FFmpegError:
                self.decode_errors += 1
        end = self._last_video_ms + int(1000 / (self.frame_rate or 30))
        for rendition in self.videos:
            rendition.finish(end, out)
        if self.audio is not None:
            self.audio.finish(out)
        return out

    def _hold(self, message: MediaMessage, out: list[Output]) -> bool:
        """
        Media time 0 is the first video frame's presentation time (a source
        with B-frames presents its first frame after its first dts), so coded
        audio that comes first waits for it, up to a second; with no video by
        then the stream is taken as audio only.
        """
        if self.origin_ms is not None or self.video_decoder is None:
            return False
        if flv.parse_audio(message.payload).sequence_header:
            return False
        self._held_audio.append(message)
        first = self._held_audio[0].timestamp
        if (message.timestamp - first) & 0xFFFFFFFF < 1000:
            return True
        held, self._held_audio = self._held_audio[:-1], []
        self.origin_ms = first
        for audio in held:
            self._audio(audio, out)
        return False

    def _media_ms(self, timestamp: int) -> int:
        if self.origin_ms is None:
            self.origin_ms = timestamp
        media_ms = _serial(timestamp - self.origin_ms) + self.resume_ms
        last = self._last_media_ms
        if last is not None and abs(media_ms - last) > MAX_TIMESTAMP_JUMP_MS:
            # No publisher's clock jumps a minute between two messages (one
            # silent for half that is dropped): a new timeline, which goes on
            # where the old one was, not hours of slate and stills to fill.
            self.timeline_resets += 1
            self.origin_ms = (timestamp - (last + TIMELINE_STEP_MS - self.resume_ms)) & 0xFFFFFFFF
            media_ms = last + TIMELINE_STEP_MS
        self._last_media_ms = media_ms
        return media_ms

    # Video -----------------------------------------------------------------

    def _video(self, message: MediaMessage, out: list[Output]) -> None:
        import av

        tag = flv.parse_video(message.payload)
        if tag.command or tag.end_of_sequence:
            return
        if tag.codec not in self.settings.video_codecs:
            raise _Refuse("video codec %r cannot be transcoded (only H.264)" % (tag.codec,))
        data = message.payload[tag.data_offset :]
        if tag.sequence_header:
            decoder = av.CodecContext.create("h264", "r")
            decoder.extradata = data
            # Frame threading would hold frames back (latency); slices do not.
            decoder.thread_type = "SLICE"
            self.video_decoder = decoder
            return
        if self.video_decoder is None:
            return  # frames before the sequence header cannot be decoded
        if self.origin_ms is None:
            self.origin_ms = (message.timestamp + tag.composition_time) & 0xFFFFFFFF
        dts = self._media_ms(message.timestamp)
        packet = av.Packet(data)
        packet.dts = dts
        packet.pts = dts + tag.composition_time
        packet.time_base = MS
        self.frames_in += 1
        try:
            frames = self.video_decoder.decode(packet)
        except av.FFmpegError:
            self.decode_errors += 1
            return
        for frame in frames:
            self._encode_frame(frame, out)

    def _encode_frame(self, frame: Any, out: list[Output]) -> None:
        media_ms = int(frame.pts * (frame.time_base or MS) * 1000) if frame.pts is not None else self._last_video_ms
        if not self.videos:
            self._start_video(frame.width, frame.height, out)
            if self.resume_ms > self.clock.base_ms:
                self._slate_video(media_ms, out)
        number = self.clock.number_at(media_ms)
        newest = self.videos[0]._forced
        if newest and (number > newest + 1 or (number > newest and media_ms - self.clock.start_of(number) > 50)):
            # Video missing across a segment boundary (dropped while the
            # encoder was behind, or a publisher that skipped): the last
            # picture stands in from each segment start it missed, so no
            # segment is missing or starts late for a player.
            self._still_video(newest + 1, media_ms, [(r, r.last_frame) for r in self.videos], out)
        elif self.shedding and number == newest:
            # Behind real time: frames inside a segment are left out (half
            # the frame rate and half the work, or a third, or a quarter)
            # rather than letting the viewers' segments come late.
            if self._since_kept < int(self.shedding):
                self._since_kept += 1
                self.frames_shed += 1
                return
        self._since_kept = 0
        self._last_video_ms = max(self._last_video_ms, media_ms)
        began = time.perf_counter()
        for rendition in self.videos:
            spec = rendition.spec
            if frame.width == spec.width and frame.height == spec.height and frame.format.name == "yuv420p":
                scaled = frame
            else:
                scaled = rendition.reformatter.reformat(
                    frame, spec.width, spec.height, "yuv420p", interpolation="BILINEAR"
                )
            rendition.encode(scaled, media_ms, self.clock,
                             (media_ms - self.resume_ms + (self.origin_ms or 0)) & 0xFFFFFFFF, out)
            rendition.last_frame = scaled
        self.encode_seconds += time.perf_counter() - began
        self.frames_out += 1

    def _start_video(self, width: int, height: int, out: list[Output]) -> None:
        rate = Fraction(self.frame_rate or 30).limit_denominator(1001)
        specs = self.fixed_renditions or plan(width, height, self.settings.rungs)
        for spec in specs:
            self.videos.append(_VideoRendition(spec, rate, self.settings.preset, self.settings.chunk_ms))

    def _slate_video(self, until_ms: int, out: list[Output]) -> None:
        """A dark still keyframe at every segment start before the source's first frame."""
        import av

        stills = []
        for rendition in self.videos:
            still = av.VideoFrame(rendition.spec.width, rendition.spec.height, "yuv420p")
            for plane, value in zip(still.planes, (16, 128, 128)):  # dark grey (BT.601 limited range)
                plane.update(bytes([value]) * plane.buffer_size)
            stills.append((rendition, still))
        self._still_video(self.clock.first_number, until_ms, stills, out)

    def _still_video(self, first: int, until_ms: int, stills: list[tuple[_VideoRendition, Any]],
                     out: list[Output]) -> None:
        """Each rendition's still as a keyframe at every segment start from ``first`` up to ``until_ms``."""
        for number in range(first, self.clock.number_at(until_ms) + 1):
            start = self.clock.start_of(number)
            if start >= until_ms:
                break
            for rendition, still in stills:
                if still is not None:
                    rendition.encode(still, start, self.clock, -1, out)

    def _slate_audio(self, until_ms: int, like: Any, out: list[Output]) -> None:
        """
        Silence from the period's start up to the source's first audio, in
        the format of that audio (``like``), so the resampler keeps one.
        """
        import av

        assert self.audio is not None
        rate = like.sample_rate
        total = (until_ms - self.clock.base_ms) * rate // 1000
        done = 0
        while done < total:
            samples = min(rate, total - done)  # a second at a time
            silence = av.AudioFrame(format=like.format.name, layout=like.layout.name, samples=samples)
            for plane in silence.planes:
                plane.update(bytes(plane.buffer_size))
            silence.sample_rate = rate
            self.audio.feed(silence, self.clock.base_ms + done * 1000 // rate, out)
            done += samples

    # Audio -----------------------------------------------------------------

    def _audio(self, message: MediaMessage, out: list[Output]) -> None:
        import av

        tag = flv.parse_audio(message.payload)
        if tag.codec not in ("AAC", "mp4a"):
            raise _Refuse("audio codec %r cannot be transcoded (only AAC)" % (tag.codec,))
        data = message.payload[tag.data_offset :]
        if tag.sequence_header:
            decoder = av.CodecContext.create("aac", "r")
            decoder.extradata = data
            self.audio_decoder = decoder
            if self.audio is None:
                self.audio = _AudioRendition(self.settings.audio_bitrate, self.settings.chunk_ms)
                self.audio.clock = self.clock
            return
        if self.audio_decoder is None or self.audio is None:
            return
        media_ms = self._media_ms(message.timestamp)
        packet = av.Packet(data)
        packet.pts = packet.dts = media_ms
        packet.time_base = MS
        try:
            frames = self.audio_decoder.decode(packet)
        except av.FFmpegError:
            self.decode_errors += 1
            return
        for frame in frames:
            if self.audio.next_sample is None and self.resume_ms > self.clock.base_ms:
                self._slate_audio(media_ms, frame, out)
            self.audio.feed(frame, media_ms, out)


def _serial(delta: int) -> int:
    """A difference of RTMP timestamps, which wrap at 2**32 ms, as a signed number."""
    delta &= 0xFFFFFFFF
    return delta - (1 << 32) if delta >= 1 << 31 else delta


class _Refuse(Exception):
    pass
