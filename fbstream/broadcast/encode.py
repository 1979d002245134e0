"""
The broadcaster's encoder: a source's frames to H.264 and AAC with PyAV, out
as FLV tags, on a thread of its own (no Twisted here).

libavformat's FLV muxer makes the tags (the AVC and AAC sequence headers,
length-prefixed NAL units, ``onMetaData``) into a writer that splits them as
they come (:class:`~fbstream.rtmp.flv.FileTags`); ``deliver`` gets each
frame's tags at once (``flush_packets``). The video bitrate can change while
it runs: libx264 takes a new bitrate between two frames (its ``reconfig``,
which needs the VBV set at the start), and the first frame at the new rate
is an IDR, so a viewer's player and the server's transcoder see the change at
a keyframe. A bitrate of 0 stops the video: audio goes on alone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import Any

from fbstream.rtmp.flv import FileTags

Tag = tuple[int, int, bytes]


class _TagWriter:
    """The muxer's output, as tags to ``deliver``."""

    def __init__(self, deliver: Callable[[list[Tag]], None]) -> None:
        self.tags = FileTags()
        self.deliver = deliver

    def write(self, data: bytes) -> int:
        tags = self.tags.feed(bytes(data))
        if tags:
            self.deliver(tags)
        return len(data)


class Encoder:
    """
    Encodes ``source`` in real time until :meth:`stop`, calling ``deliver``
    (on this thread) with the FLV tags of each packet.

    ``maximum`` is the most video bitrate it may be asked for: the VBV's rate,
    so a burst never passes it. :meth:`set_bitrate` and :meth:`keyframe` may
    be called from any thread; they take effect at the next frame.
    """

    def __init__(self, source: Iterator[tuple[str, Any]], deliver: Callable[[list[Tag]], None], *,
                 width: int, height: int, rate: int, maximum: int, bitrate: int | None = None,
                 audio_bitrate: int = 64_000, gop_seconds: float = 2.0, preset: str = "veryfast",
                 realtime: bool = True) -> None:
        self.source = source
        self.deliver = deliver
        self.width, self.height, self.rate = width, height, rate
        self.maximum = maximum
        self.audio_bitrate = audio_bitrate
        self.gop = max(1, round(gop_seconds * rate))
        self.preset = preset
        self.realtime = realtime
        #: The bitrate asked for, and the one the encoder runs at.
        self.wanted = bitrate if bitrate is not None else maximum
        self.bitrate = self.wanted
        self._keyframe = False
        self._stopping = threading.Event()
        self.thread: threading.Thread | None = None
        #: Counts, for the display and the tests.
        self.frames = 0
        self.skipped_frames = 0
        self.error: BaseException | None = None

    def set_bitrate(self, bitrate: int) -> None:
        self.wanted = max(0, min(self.maximum, int(bitrate)))

    def keyframe(self) -> None:
        """Make the next video frame an IDR (a new connection starts on one)."""
        self._keyframe = True

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="fbstream-broadcast-encoder", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)

    def _run(self) -> None:
        try:
            self.encode()
        except BaseException as e:  # reported by whoever runs it
            self.error = e

    def encode(self) -> None:
        import av
        from av.video.frame import PictureType

        writer = _TagWriter(self.deliver)
        # flush_packets: each packet's tags at once; no_duration_filesize:
        # the writer cannot seek back to fill them in at the end.
        container = av.open(writer, "w", format="flv",
                            options={"flush_packets": "1", "flvflags": "no_duration_filesize"})
        video = container.add_stream("libx264", rate=self.rate)
        video.width, video.height, video.pix_fmt = self.width, self.height, "yuv420p"
        video.bit_rate = self.bitrate or self.maximum
        video.codec_context.gop_size = self.gop
        video.codec_context.max_b_frames = 0
        video.options = {
            "preset": self.preset,
            "tune": "zerolatency",
            "forced-idr": "1",
            # A VBV from the start lets libx264 take a new bitrate later;
            # half a second of buffer keeps a burst (an IDR) short.
            "maxrate": "%d" % (self.maximum,),
            "bufsize": "%d" % (self.maximum // 2,),
            "x264-params": "keyint=%d:min-keyint=%d:scenecut=0" % (self.gop, self.gop),
        }
        audio = container.add_stream("aac", rate=48000)
        audio.layout = "stereo"
        audio.bit_rate = self.audio_bitrate
        began = time.monotonic()
        video_tb = Fraction(1, self.rate)
        try:
            for kind, frame in self.source:
                if self._stopping.is_set():
                    break
                if kind == "audio":
                    for packet in audio.encode(frame):
                        container.mux(packet)
                    continue
                if self.realtime:
                    ahead = began + float(frame.pts * video_tb) - time.monotonic()
                    if ahead > 0:
                        self._stopping.wait(ahead)
                self.frames += 1
                wanted = self.wanted
                if wanted == 0:
                    self.bitrate = 0
                    self.skipped_frames += 1
                    continue
                frame.pict_type = PictureType.NONE
                if wanted != self.bitrate or self._keyframe:
                    if wanted != self.bitrate:
                        video.codec_context.bit_rate = wanted
                        self.bitrate = wanted
                    self._keyframe = False
                    frame.pict_type = PictureType.I
                frame.time_base = video_tb
                for packet in video.encode(frame):
                    container.mux(packet)
        finally:
            try:
                for packet in video.encode(None):
                    container.mux(packet)
                for packet in audio.encode(None):
                    container.mux(packet)
            finally:
                container.close()
