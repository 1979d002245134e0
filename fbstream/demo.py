"""
A synthetic broadcaster: a test pattern with a running clock and a tone,
encoded with PyAV (libx264 + AAC) and published over RTMP(S) like any other
broadcaster, through the real ingest.

``twistd fbstream --role=all --demo`` runs it as a child process (restarted if
it exits); the tests run it directly as a publisher that we did not write the
RTMP client of (it is libavformat's). Run alone::

    python -m fbstream.demo --url rtmp://127.0.0.1:1935/live/demo

It prints one JSON line with the packets it sent when it finishes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from twisted.logger import Logger
from twisted.runner.procmon import ProcessMonitor

from fbstream.config import RoleConfig
from fbstream.reactors import IReactorProcessTime

log = Logger()


def publish(
    url: str,
    duration: float | None,
    size: str = "1280x720",
    rate: int = 30,
    gop: int = 60,
    bitrate: int = 2_000_000,
    audio: bool = True,
    realtime: bool = True,
    start_ms: int = 0,
    bframes: int = 0,
    preset: str = "veryfast",
) -> dict[str, Any]:
    """Publish until ``duration`` seconds of media are sent (forever if None)."""
    import av
    from av.video.frame import PictureType

    from fbstream.broadcast.sources import pattern_pulls

    width, height = (int(v) for v in size.split("x"))
    pull_video, pull_audio = pattern_pulls(width, height, rate, audio)
    container = av.open(url, "w", format="flv")
    video = container.add_stream("libx264", rate=rate)
    video.width = width
    video.height = height
    video.pix_fmt = "yuv420p"
    video.bit_rate = bitrate
    video.codec_context.gop_size = gop
    video.codec_context.max_b_frames = bframes
    video.options = {
        "preset": preset,
        "tune": "zerolatency" if not bframes else "film",
        "x264-params": "keyint=%d:min-keyint=%d:scenecut=0" % (gop, gop),
    }
    astream = None
    if audio:
        astream = container.add_stream("aac", rate=48000)
        astream.layout = "stereo"
        astream.bit_rate = 128_000

    counts = {"video_packets": 0, "audio_packets": 0, "keyframes": 0}
    vtb = Fraction(1, rate)

    def mux(packets: Sequence[Any], kind: str) -> None:
        for packet in packets:
            if packet.dts is None:
                continue
            if start_ms:
                shift = int(Fraction(start_ms, 1000) / packet.time_base)
                packet.pts += shift
                packet.dts += shift
            container.mux(packet)
            counts[kind + "_packets"] += 1
            if kind == "video" and packet.is_keyframe:
                counts["keyframes"] += 1

    began = time.monotonic()
    frame_no = 0
    audio_samples = 0
    while duration is None or frame_no < duration * rate:
        frame = pull_video()
        assert isinstance(frame, av.VideoFrame)
        # Source filters mark every frame I; let the encoder place keyframes.
        frame.pict_type = PictureType.NONE
        frame.pts = frame_no
        frame.time_base = vtb
        mux(video.encode(frame), "video")
        frame_no += 1
        if astream is not None:
            while audio_samples < frame_no * 48000 // rate:
                aframe = pull_audio()
                assert isinstance(aframe, av.AudioFrame)
                aframe.pts = audio_samples
                aframe.time_base = Fraction(1, 48000)
                audio_samples += aframe.samples
                mux(astream.encode(aframe), "audio")
        if realtime:
            # This runs in its own process, never on a reactor thread.
            ahead = began + frame_no / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    mux(video.encode(None), "video")
    if astream is not None:
        mux(astream.encode(None), "audio")
    container.close()
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("FBSTREAM_DEMO_URL"),
                        help="where to publish (default: $FBSTREAM_DEMO_URL, which keeps a token out of ps)")
    parser.add_argument("--duration", type=float, default=None, help="seconds (default: forever)")
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--rate", type=int, default=30)
    parser.add_argument("--gop", type=int, default=60, help="frames between keyframes")
    parser.add_argument("--bitrate", type=int, default=2_000_000)
    parser.add_argument("--bframes", type=int, default=0)
    parser.add_argument("--preset", default="veryfast", help="x264 preset of the published video")
    parser.add_argument("--no-audio", action="store_true")
    parser.add_argument("--fast", action="store_true", help="do not pace in real time")
    parser.add_argument("--start-ms", type=int, default=0, help="offset every timestamp (ms)")
    args = parser.parse_args(argv)
    if not args.url:
        parser.error("give --url or set $FBSTREAM_DEMO_URL")
    counts = publish(
        args.url,
        args.duration,
        size=args.size,
        rate=args.rate,
        gop=args.gop,
        bitrate=args.bitrate,
        audio=not args.no_audio,
        realtime=not args.fast,
        start_ms=args.start_ms,
        bframes=args.bframes,
        preset=args.preset,
    )
    sys.stdout.write(json.dumps(counts) + "\n")
    return 0


def demo_url(pop: RoleConfig, name: str = "demo") -> str:
    """The ingest URL of the PoP's first RTMP listener, as seen from this host."""
    for description in pop["rtmp.listen"]:
        parts = description.split(":")
        kind = parts[0]
        if kind not in ("tcp", "ssl"):
            continue
        port = None
        host = "127.0.0.1"
        for part in parts[1:]:
            key, eq, value = part.partition("=")
            if eq and key == "port":
                port = value
            elif eq and key == "interface" and value not in ("", "0.0.0.0", "::"):
                host = value
            elif not eq and port is None:
                port = part
        if port:
            scheme = "rtmp" if kind == "tcp" else "rtmps"
            return "%s://%s:%s/%s/%s" % (scheme, host, port, pop["rtmp.app"], name)
    raise ValueError("the PoP has no tcp: or ssl: RTMP listener for the demo to publish to")


def demo_publisher(reactor: IReactorProcessTime, python: str, url: str) -> ProcessMonitor:
    """
    The demo publisher as a child process, under Twisted's process monitor:
    restarted when it exits (after 1 s, doubling to 30 s while it keeps
    dying), its standard error logged line by line, stopped with the role.

    The URL carries the demo's stream token: it goes to the child in its
    environment (not its argv, which every user of the host can read with
    ps), and to the log without its query.
    """
    monitor = ProcessMonitor(reactor=reactor)
    monitor.minRestartDelay = 1
    monitor.maxRestartDelay = 30
    log.info("demo publisher -> {url}", url=url.partition("?")[0])
    # The demo's own encoding is the cheapest x264 has: on a small machine it
    # shares the cores with the encoder and the viewers.
    monitor.addProcess("demo", [python, "-m", "fbstream.demo", "--preset", "ultrafast"],
                       env=dict(os.environ, FBSTREAM_DEMO_URL=url))
    return monitor


if __name__ == "__main__":
    sys.exit(main())
