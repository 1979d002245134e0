"""
The encoder's cost and latency, for a 720p30 source and the default ladder
(720p/480p/360p/240p H.264 + AAC 64 kbps):

1. CPU seconds per second of media for fbstream's transcoder, and for the
   ffmpeg tool encoding the same ladder with the same x264 settings from the
   same source in the same run; their ratio.
2. The real-time factor: media seconds transcoded per wall second.
3. Segment availability lag: from the moment the encoder receives a segment's
   last frame to that segment being complete (fetchable) in every rendition,
   with a publisher (PyAV over RTMP) pacing frames in real time into a running
   encoder role. Median and p95.

    python bench/encode.py [--seconds 20] [--live-seconds 30]
    python bench/encode.py --smoke    (CI: 3 s for the CPU comparison, 6 s live)

The exit status is non-zero only if the bench itself broke (no ffmpeg, the
publish refused, no segment measured), never on a figure.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from fbstream.encoder.ladder import DEFAULT_RUNGS, parse_rungs, plan  # noqa: E402
from fbstream.encoder.transcode import Transcoder, TranscoderSettings  # noqa: E402
from fbstream.live.hub import MediaMessage  # noqa: E402
from fbstream.rtmp import flv  # noqa: E402

#: The live half's stream and the key its encoder checks the stream token with.
STREAM = "bench"
TOKEN_KEYS = "k1:" + "42" * 32


def make_source(path: str, seconds: float) -> None:
    """A 720p30 H.264 (2 s GOP, 4 Mbps) + AAC source, as a broadcaster sends."""
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
         "-c:v", "libx264", "-preset", "veryfast", "-b:v", "4M", "-g", "60",
         "-c:a", "aac", "-b:a", "128k", "-f", "flv", path],
        check=True,
    )


def ours(path: str) -> tuple[float, float]:
    """(CPU seconds, wall seconds) for fbstream's transcoder over the whole file."""
    with open(path, "rb") as f:
        messages = [MediaMessage(t, ts, p) for t, ts, p in flv.read_file(f.read()) if t in (8, 9)]
    tx = Transcoder(TranscoderSettings(parse_rungs(list(DEFAULT_RUNGS))), frame_rate=30)
    cpu = time.process_time()
    wall = time.perf_counter()
    for message in messages:
        tx.feed(message)
    tx.finish()
    return time.process_time() - cpu, time.perf_counter() - wall


def ffmpeg_ladder(path: str, out_dir: str) -> tuple[float, float]:
    """(CPU seconds, wall seconds) for the ffmpeg tool encoding the same ladder."""
    renditions = plan(1280, 720, parse_rungs(list(DEFAULT_RUNGS)))
    n = len(renditions)
    graph = "[0:v]split=%d%s;" % (n, "".join("[s%d]" % i for i in range(n)))
    graph += ";".join(
        "[s%d]scale=%d:%d:flags=bilinear[v%d]" % (i, r.width, r.height, i) for i, r in enumerate(renditions)
    )
    args = ["ffmpeg", "-v", "error", "-y", "-i", path, "-filter_complex", graph]
    for i, r in enumerate(renditions):
        args += [
            "-map", "[v%d]" % (i,), "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency",
            "-b:v", str(r.bitrate), "-g", "100000", "-force_key_frames", "expr:gte(t,n_forced*1)",
            "-x264-params", "scenecut=0:vbv-maxrate=%d:vbv-bufsize=%d:nal-hrd=none"
            % (r.bitrate * 12 // 10000, r.bitrate // 1000),
            "-bf", "0", "-an", "-f", "mp4", "-movflags", "frag_keyframe+empty_moov+default_base_moof",
            "-frag_duration", "250000", os.path.join(out_dir, "%s.mp4" % (r.name,)),
        ]
    args += ["-map", "0:a", "-c:a", "aac", "-b:a", "64k", "-ar", "48000", "-vn", "-f", "mp4",
             "-movflags", "frag_keyframe+empty_moov+default_base_moof", os.path.join(out_dir, "audio.mp4")]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    subprocess.run(args, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, time.perf_counter() - wall


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broken(Exception):
    """The bench itself broke (not a slow figure)."""


def live_lag(seconds: float) -> list[float]:
    """
    Availability lags of a real-time publish into an in-process encoder role.
    The encoder checks stream tokens as in production: it is given a key, and
    the publisher a token signed with it.
    """
    from twisted.internet import defer, reactor
    from twisted.internet.protocol import ProcessProtocol

    from fbstream.config import load
    from fbstream.live.tokens import KeyRing
    from fbstream.roles.build import build_role

    class Publisher(ProcessProtocol):
        def __init__(self) -> None:
            self.err = bytearray()
            self.ended: defer.Deferred[int] = defer.Deferred()
            self.running = True

        def errReceived(self, data: bytes) -> None:
            self.err += data
            del self.err[:-4000]

        def processEnded(self, reason) -> None:  # type: ignore[no-untyped-def]
            self.running = False
            self.ended.callback(reason.value.exitCode)

    work = tempfile.mkdtemp(prefix="fbstream-bench-")
    keys = os.path.join(work, "token-keys")
    with open(keys, "w") as f:
        f.write(TOKEN_KEYS + "\n")
    port = free_port()
    cfg = load("encoder", None, [
        "rtmp.listen=tcp:%d:interface=127.0.0.1" % (port,),
        "http.listen=tcp:0:interface=127.0.0.1",
        "archive.dir=%s" % (os.path.join(work, "archive"),),
        "tokens.keys_file=%s" % (keys,),
    ])["encoder"]
    token = KeyRing.parse(TOKEN_KEYS).sign(STREAM, "dc1", time.time())
    url = "rtmp://127.0.0.1:%d/live/%s?token=%s" % (port, STREAM, token)
    result: list[float] = []
    failures: list[str] = []

    publisher = Publisher()
    process = None

    def kill() -> None:
        if process is not None and publisher.running:
            process.signalProcess("KILL")

    @defer.inlineCallbacks
    def go():  # type: ignore[no-untyped-def]
        nonlocal process
        service = None
        try:
            service = build_role(cfg, reactor)
            service.startService()
            process = reactor.spawnProcess(
                publisher, sys.executable,
                [sys.executable, "-m", "fbstream.demo", "--url", url, "--duration", str(seconds),
                 "--size", "1280x720", "--bitrate", "4000000"],
                env=dict(os.environ, PYTHONPATH=ROOT), path=ROOT,
            )
            # Killed on any way out, an interrupt included.
            reactor.addSystemEventTrigger("before", "shutdown", kill)
            code = yield publisher.ended.addTimeout(seconds + 60, reactor)
            if code != 0:
                failures.append("the publisher exited with status %s:\n%s"
                                % (code, publisher.err.decode(errors="replace")[-2000:]))
                return
            encoder = service.encoder.encoders.get(STREAM)
            if encoder is None:
                failures.append("the encoder never received the stream")
                return
            # Every segment is complete once the encoder has finished the publish.
            yield service.encoder.idle(STREAM).addTimeout(60, reactor)
            result.extend(encoder.lags)
        except Exception as e:
            failures.append("%s: %s" % (type(e).__name__, e))
        finally:
            try:
                kill()
                if service is not None:
                    yield service.stopService()
            finally:
                reactor.stop()

    try:
        reactor.callWhenRunning(go)
        reactor.run()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if failures:
        raise Broken("live half: " + "; ".join(failures))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="media seconds for the CPU comparison")
    parser.add_argument("--live-seconds", type=float, default=30.0, help="seconds of real-time publishing")
    parser.add_argument("--smoke", action="store_true", help="3 s for the CPU comparison, 6 s live (for CI)")
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.live_seconds = 3.0, 6.0
    if shutil.which("ffmpeg") is None:
        print("the bench broke: the ffmpeg tool is not installed (apt-get install ffmpeg)", file=sys.stderr)
        return 1
    work = tempfile.mkdtemp(prefix="fbstream-bench-")
    try:
        source = os.path.join(work, "source.flv")
        make_source(source, args.seconds)
        cpu, wall = ours(source)
        ff_cpu, ff_wall = ffmpeg_ladder(source, work)
        print("Encoding %.0f s of 720p30 to 720p/480p/360p/240p + AAC 64k, %d cores"
              % (args.seconds, os.cpu_count() or 1))
        print("%-34s %12s %12s %16s" % ("", "CPU s", "wall s", "CPU s / media s"))
        print("%-34s %12.2f %12.2f %16.3f" % ("fbstream transcoder (PyAV)", cpu, wall, cpu / args.seconds))
        print("%-34s %12.2f %12.2f %16.3f"
              % ("ffmpeg tool, same ladder+settings", ff_cpu, ff_wall, ff_cpu / args.seconds))
        print("CPU ratio fbstream / ffmpeg: %.2f (target <= 1.15)" % (cpu / ff_cpu,))
        print("real-time factor (media s per wall s, fbstream): %.2fx" % (args.seconds / wall,))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.stdout.flush()
    try:
        lags = sorted(live_lag(args.live_seconds))
    except Broken as e:
        print("the bench broke: %s" % (e,), file=sys.stderr)
        return 1
    if not lags:
        print("the bench broke: no segment availability lag was measured", file=sys.stderr)
        return 1
    p95 = lags[min(len(lags) - 1, round(0.95 * (len(lags) - 1)))]
    print("segment availability lag over %d segments (real-time 720p30 publish): "
          "median %.0f ms, p95 %.0f ms, max %.0f ms (target: median <= 150 ms)"
          % (len(lags), statistics.median(lags) * 1000, p95 * 1000, lags[-1] * 1000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
