"""
What the ingest path costs, measured on real processes over loopback:

1. Added latency and CPU per relay hop for a 6 Mbps stream. A publisher in
   this process sends 30 video messages a second of 25,000 bytes each, each
   stamped with its send time, to (a) the sink directly, (b) a dc-proxy in
   front of the sink, (c) a PoP in front of that dc-proxy. The sink is a
   stand-alone PoP that publishes into its own hub (no transcoding), and a
   player in this process reads it back over RTMP; the send-to-arrival time
   per message gives the latency, and /proc gives each relay's CPU seconds
   per second of media.
2. The time from a broadcaster's reconnect to the first new segment in the
   manifest: ``twistd --role=all``, a live video from the live API, PyAV
   publishing 8 s, a pause, and PyAV publishing again with the same token;
   the clock runs from the moment the second publisher process is started
   until the encoder's HLS playlist lists (a) a segment of the new period
   (the slate that covers the time away comes first) and (b) the first
   segment holding the broadcaster's new media (more than one frame).

    python bench/ingest_path.py [--seconds 20] [--reconnects 3]
    python bench/ingest_path.py --smoke    (CI: 3 s per path, one reconnect after 4 s)

(``--seconds 0`` or ``--reconnects 0`` leaves that part out.) The exit status
is non-zero only if the bench itself broke (a server that does not come up,
a refused publish, no media through a path), never on a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from fbstream.encoder.fmp4 import sample_count  # noqa: E402

FRAME_BYTES = 25_000  # 30 a second: 6 Mbps
RATE = 30
TOKEN_KEYS = "k1:" + "42" * 32
API_KEY = "bench-api-key"


class Broken(Exception):
    """The bench itself broke (not a slow figure)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def twistd() -> str:
    path = os.path.join(os.path.dirname(sys.executable), "twistd")
    return path if os.path.exists(path) else (shutil.which("twistd") or "twistd")


def start(role: str, args: list[str], directory: str, name: str) -> tuple[subprocess.Popen[bytes], int]:
    http = free_port()
    env = dict(os.environ, PYTHONPATH=ROOT, FBSTREAM_TOKEN_KEYS=TOKEN_KEYS, FBSTREAM_API_KEY=API_KEY)
    log = open(os.path.join(directory, name + ".log"), "wb")
    command = [twistd(), "-n", "--pidfile=", "fbstream", "--role", role,
               "--config", os.path.join(ROOT, "conf", role + ".toml")]
    if role != "all":
        command += ["--set", "http.listen=tcp:%d:interface=127.0.0.1" % (http,)]
    proc = subprocess.Popen(command + args, cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, http


def log_tail(directory: str, name: str, lines: int = 20) -> str:
    try:
        with open(os.path.join(directory, name + ".log"), errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def wait_http(url: str, proc: subprocess.Popen[bytes], directory: str, name: str, timeout: float = 30) -> None:
    """Wait for the server ``proc`` to answer ``url``; it dying or never answering breaks the bench."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Broken("%s exited with status %s before it answered %s\n%s"
                         % (name, proc.returncode, url, log_tail(directory, name)))
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise Broken("%s did not answer %s in %.0f s\n%s" % (name, url, timeout, log_tail(directory, name)))


def cpu_seconds(pid: int) -> float:
    with open("/proc/%d/stat" % (pid,)) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


# 1. Relay hops -----------------------------------------------------------------


def measure_path(target_port: int, sink_port: int, name: str, query: str, seconds: float,
                 relays: list[Any]) -> dict[str, float]:
    """Publish to ``target_port``, play from ``sink_port``; latencies and relay CPU."""
    from twisted.internet import reactor, task
    from twisted.internet.defer import inlineCallbacks
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    from fbstream.live.rtmp import RTMPClientProtocol
    from fbstream.media import MediaMessage

    latencies: list[float] = []
    result: dict[str, float] = {}

    def on_media(message: MediaMessage) -> None:
        payload = message.payload
        if message.type_id == 9 and len(payload) > 13 and payload[1] == 1:
            latencies.append(time.time() - struct.unpack_from(">d", payload, 5)[0])

    @inlineCallbacks
    def run():  # type: ignore[no-untyped-def]
        pub = RTMPClientProtocol("live", "rtmp://127.0.0.1/live", reactor)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", target_port), pub)
        yield pub.ready
        sid = yield pub.create_stream()
        yield pub.publish(sid, name + query)
        header = b"\x17\x00\x00\x00\x00\x01\x42\xc0\x1e\xff\xe1\x00\x00\x01\x00\x00"
        pub.send_media(sid, MediaMessage(9, 0, header))
        player = RTMPClientProtocol("live", "rtmp://127.0.0.1/live", reactor, on_media=on_media)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", sink_port), player)
        yield player.ready
        psid = yield player.create_stream()
        yield player.play(psid, name)
        padding = os.urandom(FRAME_BYTES - 13)
        frames = [0]
        began = time.monotonic()
        cpu_before = [cpu_seconds(p.pid) for p in relays]

        def send() -> None:
            frames[0] += 1
            ts = int((time.monotonic() - began) * 1000)
            payload = b"\x17\x01\x00\x00\x00" + struct.pack(">d", time.time()) + padding
            pub.send_media(sid, MediaMessage(9, ts, payload))

        loop = task.LoopingCall(send)
        loop.start(1 / RATE)
        yield task.deferLater(reactor, seconds, lambda: None)
        loop.stop()
        media = frames[0] / RATE
        yield task.deferLater(reactor, 1.0, lambda: None)
        for i, p in enumerate(relays):
            result["cpu%d" % (i,)] = (cpu_seconds(p.pid) - cpu_before[i]) / media
        pub.transport.loseConnection()
        player.transport.loseConnection()
        result["sent"] = frames[0]

    done: list[object] = []
    d = run()
    d.addBoth(lambda r: (done.append(r), reactor.stop()))
    reactor.run(installSignalHandlers=False)
    if done and hasattr(done[0], "raiseException"):
        done[0].raiseException()  # type: ignore[attr-defined]
    result["received"] = len(latencies)
    latencies = latencies[RATE:]  # the first second warms up
    if not latencies:
        raise Broken("%d of %d messages came through to the player" % (result["received"], result.get("sent", 0)))
    result["p50_ms"] = statistics.median(latencies) * 1000
    result["p99_ms"] = percentile(latencies, 0.99) * 1000
    return result


def relay_hops(seconds: float) -> None:
    from fbstream.live.tokens import KeyRing

    directory = tempfile.mkdtemp(prefix="fbstream-bench-")
    sink_rtmp, dc_rtmp, pop_rtmp = free_port(), free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sink, sink_http = start("pop", ["--set", "rtmp.listen=tcp:%d:interface=127.0.0.1" % (sink_rtmp,),
                                        "--set", "relay.dc_proxies=[]", "--set", "tokens.required=false",
                                        "--set", "pop.cache_listen=[]"], directory, "sink")
        procs.append(sink)
        dcp, dc_http = start("dc-proxy", ["--set", "rtmp.listen=tcp:%d:interface=127.0.0.1" % (dc_rtmp,),
                                          "--set", "relay.encoders=tcp:127.0.0.1:%d" % (sink_rtmp,)],
                             directory, "dcproxy")
        procs.append(dcp)
        pop, pop_http = start("pop", ["--set", "rtmp.listen=tcp:%d:interface=127.0.0.1" % (pop_rtmp,),
                                      "--set", "relay.dc_proxies=dc1=tcp:127.0.0.1:%d" % (dc_rtmp,),
                                      "--set", "pop.cache_listen=[]"], directory, "pop")
        procs.append(pop)
        for proc, port, name in ((sink, sink_http, "sink"), (dcp, dc_http, "dcproxy"), (pop, pop_http, "pop")):
            wait_http("http://127.0.0.1:%d/metrics" % (port,), proc, directory, name)
        token = "?token=" + KeyRing.parse(TOKEN_KEYS).sign("x", "dc1", time.time())
        runs = {}
        for label, target, relays in (("direct", sink_rtmp, []), ("dc-proxy", dc_rtmp, [dcp]),
                                      ("pop+dc-proxy", pop_rtmp, [dcp, pop])):
            # Each measurement in a child interpreter (one reactor run each).
            out = subprocess.run(
                [sys.executable, __file__, "--one-path", json.dumps([target, sink_rtmp, label.replace("+", "-"),
                                                                      token, seconds, [p.pid for p in relays]])],
                capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=seconds + 60)
            if out.returncode != 0:
                raise Broken("the %s path failed (status %d):\n%s\nlogs:\n%s"
                             % (label, out.returncode, out.stderr[-2000:],
                                "".join(log_tail(directory, n, 5) for n in ("sink", "dcproxy", "pop"))))
            runs[label] = json.loads(out.stdout.strip().splitlines()[-1])
        print("Relay hops, 6 Mbps (%d x %d B/s), %.0f s each; sink = a PoP's own hub, player over RTMP"
              % (RATE, FRAME_BYTES, seconds))
        print("  %-14s %8s %8s %10s %10s %s" % ("path", "p50 ms", "p99 ms", "sent", "received", "relay CPU s/s"))
        for label, r in runs.items():
            cpus = " ".join("%.3f" % (r[k],) for k in sorted(k for k in r if k.startswith("cpu")))
            print("  %-14s %8.2f %8.2f %10d %10d %s" % (label, r["p50_ms"], r["p99_ms"], r["sent"],
                                                         r["received"], cpus or "-"))
        d, one, two = runs["direct"], runs["dc-proxy"], runs["pop+dc-proxy"]
        print("  added by the dc-proxy hop: p50 %.2f ms, p99 %.2f ms, CPU %.3f s per media s"
              % (one["p50_ms"] - d["p50_ms"], one["p99_ms"] - d["p99_ms"], one["cpu0"]))
        print("  added by the PoP hop:      p50 %.2f ms, p99 %.2f ms, CPU %.3f s per media s"
              % (two["p50_ms"] - one["p50_ms"], two["p99_ms"] - one["p99_ms"], two["cpu1"]))
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
        shutil.rmtree(directory, ignore_errors=True)


# 2. Reconnect to first new segment ------------------------------------------


def reconnects(count: int, first: int = 8, again: int = 6) -> None:
    """``count`` reconnects: a publish of ``first`` s, then each a 2 s pause and ``again`` s more."""
    directory = tempfile.mkdtemp(prefix="fbstream-bench-")
    ports = {k: free_port() for k in ("rtmp", "dc", "enc", "pop", "dchttp", "enchttp", "origin", "cache")}
    args = [
        "--set", "pop.rtmp.listen=tcp:%d:interface=127.0.0.1" % (ports["rtmp"],),
        "--set", "dc-proxy.rtmp.listen=tcp:%d:interface=127.0.0.1" % (ports["dc"],),
        "--set", "encoder.rtmp.listen=tcp:%d:interface=127.0.0.1" % (ports["enc"],),
        "--set", "pop.relay.dc_proxies=dc1=tcp:127.0.0.1:%d" % (ports["dc"],),
        "--set", "dc-proxy.relay.encoders=tcp:127.0.0.1:%d" % (ports["enc"],),
        "--set", "encoder.encoder.advertise_http=tcp:127.0.0.1:%d" % (ports["enchttp"],),
        "--set", "encoder.encoder.ladder=[\"240:300\"]",
        "--set", "encoder.archive.dir=%s" % (os.path.join(directory, "archive"),),
        "--set", "pop.http.listen=tcp:%d:interface=127.0.0.1" % (ports["pop"],),
        "--set", "dc-proxy.http.listen=tcp:%d:interface=127.0.0.1" % (ports["dchttp"],),
        "--set", "encoder.http.listen=tcp:%d:interface=127.0.0.1" % (ports["enchttp"],),
        "--set", "origin.http.listen=tcp:%d:interface=127.0.0.1" % (ports["origin"],),
        "--set", "pop.pop.cache_listen=tcp:%d:interface=127.0.0.1" % (ports["cache"],),
        "--set", "pop.pop.cache_hosts=tcp:127.0.0.1:%d" % (ports["cache"],),
        "--set", "pop.pop.origins=tcp:127.0.0.1:%d" % (ports["origin"],),
        "--set", "origin.origin.upstreams=tcp:127.0.0.1:%d" % (ports["enchttp"],),
    ]
    proc, _ = start("all", args, directory, "all")
    publishers: list[subprocess.Popen[bytes]] = []
    try:
        api = "http://127.0.0.1:%d/api/v1/live_videos" % (ports["pop"],)
        wait_http("http://127.0.0.1:%d/metrics" % (ports["pop"],), proc, directory, "all")
        request = urllib.request.Request(api, data=b"{}", method="POST",
                                         headers={"Authorization": "Bearer " + API_KEY})
        video = json.loads(urllib.request.urlopen(request, timeout=10).read())
        url = "rtmp://127.0.0.1:%d/live/%s" % (ports["rtmp"], video["stream_key"])
        base = "http://127.0.0.1:%d/live/%s/240p/" % (ports["enchttp"], video["id"])

        def listed() -> list[int]:
            try:
                text = urllib.request.urlopen(base + "playlist.m3u8", timeout=2).read().decode()
            except OSError:
                return []
            return [int(n) for n in re.findall(r"^(\d+)\.m4s$", text, re.M)]

        def frames(number: int) -> int:
            return sample_count(urllib.request.urlopen(base + "%d.m4s" % (number,), timeout=5).read())

        def publish(seconds: int) -> subprocess.Popen[bytes]:
            name = "publisher-%d" % (len(publishers),)
            with open(os.path.join(directory, name + ".log"), "wb") as log:
                publishers.append(subprocess.Popen(
                    [sys.executable, "-m", "fbstream.demo", "--url", url, "--duration", str(seconds),
                     "--size", "426x240"], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                    stdout=subprocess.DEVNULL, stderr=log))
            return publishers[-1]

        def finished(publisher: subprocess.Popen[bytes], seconds: int) -> None:
            try:
                publisher.wait(timeout=seconds + 60)
            except subprocess.TimeoutExpired:
                raise Broken("a %d s publish did not end in %d s" % (seconds, seconds + 60)) from None
            if publisher.returncode != 0:
                raise Broken("the publisher exited with status %d:\n%s\nlog:\n%s"
                             % (publisher.returncode,
                                log_tail(directory, "publisher-%d" % (publishers.index(publisher),)),
                                log_tail(directory, "all")))

        finished(publish(first), first)
        slate_times, media_times = [], []
        for _ in range(count):
            time.sleep(2)
            before = max(listed(), default=0)
            began = time.monotonic()
            second = publish(again)
            slate = None
            checked: set[int] = set()
            while True:
                if time.monotonic() - began > 30:
                    raise Broken("no new media 30 s after the reconnect\n%s" % (log_tail(directory, "all"),))
                new = [n for n in listed() if n > before]
                if new and slate is None:
                    slate = time.monotonic() - began
                # A slate segment holds one still frame; the broadcaster's
                # media is in the first segment with more.
                if any(frames(n) > 1 for n in new if n not in checked and not checked.add(n)):
                    break
                time.sleep(0.02)
            slate_times.append(slate)
            media_times.append(time.monotonic() - began)
            finished(second, again)
        print("Reconnect (all role, 426x240 source, 240p), from starting the new publisher process:")
        print("  new period (its slate) in the manifest: %s s; median %.2f s"
              % (", ".join("%.2f" % t for t in slate_times), statistics.median(slate_times)))
        print("  first segment with the broadcaster's media: %s s; median %.2f s"
              % (", ".join("%.2f" % t for t in media_times), statistics.median(media_times)))
    finally:
        for p in publishers + [proc]:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait()
        shutil.rmtree(directory, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--reconnects", type=int, default=3)
    parser.add_argument("--smoke", action="store_true",
                        help="3 s per relay path, one reconnect after a 4 s publish (for CI)")
    parser.add_argument("--one-path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_path:
        target, sink, name, query, seconds, pids = json.loads(args.one_path)

        class _Proc:
            def __init__(self, pid: int) -> None:
                self.pid = pid

        result = measure_path(target, sink, name, query, seconds, [_Proc(p) for p in pids])
        print(json.dumps(result))
        return 0
    first, again = 8, 6
    if args.smoke:
        args.seconds, args.reconnects, first, again = 3.0, 1, 4, 4
    try:
        if args.seconds > 0:
            relay_hops(args.seconds)
            sys.stdout.flush()
        if args.reconnects > 0:
            reconnects(args.reconnects, first, again)
    except (Broken, subprocess.TimeoutExpired) as e:
        print("the bench broke: %s" % (e,), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
