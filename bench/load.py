"""
The most viewers one PoP can hold, found with fbstream's own load generator,
against nginx's proxy_cache serving the same segments to the same viewers in
the same run.

A live origin stands for the data center: a dynamic MPD (``max-age=1``) of
one video rendition (``--kbps``) and an audio one, with a new immutable
1-second segment of each every second. In front of it, one at a time:

- an fbstream PoP in one process (``pop.workers = 1``, proxy and cache layers),
- nginx with proxy_cache (one worker, cache lock on),
- the PoP with ``--workers`` worker processes (default: one per core),
- nginx with as many workers.

Against each, steady crowds of simulated viewers (``python -m fbstream.load``,
one process per core, the viewers split between them) join over 5 s and
watch for ``--seconds``, growing step by step. A step holds when its viewers'
rebuffer ratio is under 1 %, their time to first byte p99 under 500 ms, and
no request failed; the figure is the largest step that held. Neither server
writes an access log.

Each crowd measures its own CPU, and a step where a crowd saturated its
core is marked, since its figures are the load generator's from there on.
What one core of load generator simulates is measured first, on its own:
one crowd of ``--generator-viewers`` against nginx with one worker (which
needs little CPU), so that the generator has a core to itself. (In the
steps that follow, the generators and the server share this machine's
cores, and a generator's CPU per request grows with the contention.)

    python bench/load.py                 (needs nginx: apt-get install nginx)
    python bench/load.py --smoke         (CI: one short step of 100 viewers each)

The exit status is non-zero only if the bench itself broke, never on a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from pop_serve import ROOT, Broken, free_port, start_nginx, start_pop, stop_all, wait_port  # noqa: E402

NGINX_CONF = """
user root;
worker_processes {workers};
worker_rlimit_nofile 65536;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    proxy_cache_path {dir}/cache levels=1:2 keys_zone=live:32m max_size=1g inactive=10m use_temp_path=off;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        keepalive_requests 100000;
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache live;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 5s;
            # What a live nginx is given: the expired MPD served while one
            # request renews it (else its lock's waiters poll every 500 ms).
            proxy_cache_use_stale updating;
            proxy_cache_background_update on;
        }}
    }}
}}
"""

MPD = """<?xml version="1.0" encoding="utf-8"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" profiles="urn:mpeg:dash:profile:isoff-live:2011" type="dynamic"
 availabilityStartTime="{start}" minimumUpdatePeriod="PT2S" minBufferTime="PT2S" timeShiftBufferDepth="PT60S"
 suggestedPresentationDelay="PT1.2S" maxSegmentDuration="PT1S">
 <Period id="0" start="PT0S">
  <AdaptationSet contentType="video" mimeType="video/mp4">
   <SegmentTemplate timescale="1000" duration="1000" startNumber="0"
    initialization="$RepresentationID$/init.mp4" media="$RepresentationID$/$Number$.m4s"/>
   <Representation id="video" bandwidth="{video}" height="360"/>
  </AdaptationSet>
  <AdaptationSet contentType="audio" mimeType="audio/mp4">
   <SegmentTemplate timescale="1000" duration="1000" startNumber="0"
    initialization="$RepresentationID$/init.mp4" media="$RepresentationID$/$Number$.m4s"/>
   <Representation id="audio" bandwidth="64000"/>
  </AdaptationSet>
 </Period>
</MPD>
"""


def origin(port: int, kbps: int) -> None:
    """A live stream of any name: its MPD, init segments, and a segment of each rendition a second."""
    import re

    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    start = int(time.time()) - 30
    sizes = {b"video": kbps * 1000 // 8, b"audio": 64000 // 8}
    mpd = MPD.format(start=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)), video=kbps * 1000).encode()
    path_re = re.compile(rb"^/live/[A-Za-z0-9_-]+/(?:manifest\.mpd|(video|audio)/(init\.mp4|(\d+)\.m4s))$")

    class Live(Resource):
        isLeaf = True

        def render_GET(self, request):  # type: ignore[no-untyped-def]
            match = path_re.match(request.path)
            if match is None:
                request.setResponseCode(404)
                return b"no\n"
            rendition, name, number = match.groups()
            if rendition is None:
                request.setHeader(b"content-type", b"application/dash+xml")
                request.setHeader(b"cache-control", b"public, max-age=1")
                return mpd
            if number is not None and start + int(number) + 1 > time.time():
                request.setResponseCode(404)  # not made yet
                request.setHeader(b"cache-control", b"no-store")
                return b"not yet\n"
            request.setHeader(b"content-type", b"video/mp4")
            request.setHeader(b"cache-control", b"public, max-age=31536000, immutable")
            return b"\0" * (1000 if name == b"init.mp4" else sizes[rendition])

    reactor.listenTCP(port, Site(Live()), interface="127.0.0.1", backlog=4096)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


def crowd(url: str, viewers: int, seconds: float, out: str) -> subprocess.Popen[bytes]:
    """One load generator process (``python -m fbstream.load``), its figures to ``out``."""
    return subprocess.Popen(
        [sys.executable, "-m", "fbstream.load", url, "--viewers", str(viewers), "--seconds", str(seconds),
         "--join-over", "5", "--streams", "bench", "--json", out],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=ROOT))


def step(url: str, viewers: int, seconds: float, processes: int, work: str) -> dict[str, Any]:
    """``viewers`` split over ``processes`` crowds: their figures added up."""
    shares = [viewers // processes + (1 if i < viewers % processes else 0) for i in range(processes)]
    outs = [os.path.join(work, "crowd-%d-%d.json" % (viewers, i)) for i in range(processes)]
    procs = [crowd(url, n, seconds, out) for n, out in zip(shares, outs) if n]
    for proc in procs:
        if proc.wait(timeout=seconds + 120) != 0:
            raise Broken("a load generator exited with status %d" % (proc.returncode,))
    stalled = played = 0.0
    ttfb_p99, errors, saturated, cpu, requests = 0.0, 0, 0, 0.0, 0
    for out in outs[:len(procs)]:
        with open(out) as f:
            result = json.load(f)
        summary = result["summary"]
        stalled += summary["stalled_seconds"]
        played += summary["played_seconds"]
        ttfb_p99 = max(ttfb_p99, summary["ttfb_p99"] or 0.0)
        errors += sum(summary["errors"].values())
        saturated += summary["cpu_saturated_seconds"]
        requests += summary["requests"]
        # The crowd's CPU while every viewer watched (after the joins).
        steady = [s["cpu"] for s in result["seconds"] if s["t"] >= 6]
        cpu += sum(steady) / len(steady) if steady else 0.0
    rebuffer = stalled / (stalled + played) if stalled + played else 1.0
    return {"viewers": viewers, "rebuffer": rebuffer, "ttfb_p99": ttfb_p99, "errors": errors,
            "saturated": saturated, "generator_cores": cpu, "requests_per_second": requests / seconds,
            "held": rebuffer < 0.01 and ttfb_p99 < 0.5 and errors == 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--origin", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--kbps", type=int, default=500, help="the video rendition's bitrate")
    parser.add_argument("--seconds", type=float, default=20.0, help="each step's length")
    parser.add_argument("--steps", default="500,1000,2000,3000,4000,6000,8000", help="viewers of each step")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="PoP workers, nginx workers")
    parser.add_argument("--generators", type=int, default=os.cpu_count() or 1, help="load generator processes")
    parser.add_argument("--generator-viewers", type=int, default=4000,
                        help="viewers of the one crowd that measures the load generator alone")
    parser.add_argument("--smoke", action="store_true", help="one step of 100 viewers for 6 s (CI)")
    args = parser.parse_args()
    if args.origin:
        origin(args.origin, args.kbps)
        return 0
    if args.smoke:
        args.seconds, args.steps, args.generator_viewers = 6.0, "100", 300
    steps = [int(n) for n in args.steps.split(",")]
    if shutil.which("nginx") is None:
        print("the bench broke: nginx is not installed (apt-get install -y nginx)", file=sys.stderr)
        return 1
    work = tempfile.mkdtemp(prefix="fbstream-load-bench-")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the crowds inherit it
        up = free_port()
        procs.append(subprocess.Popen([sys.executable, __file__, "--origin", str(up), "--kbps", str(args.kbps)]))
        wait_port(up, procs[-1], "the origin")
        def pop(workers: int) -> tuple[int, subprocess.Popen[bytes], str]:
            return start_pop(procs, work, up, workers, "http.max_connections=30000")

        def nginx(workers: int) -> tuple[int, subprocess.Popen[bytes], str]:
            return start_nginx(procs, work, NGINX_CONF, up, workers)

        servers = [("fbstream PoP, 1 process", pop, 1), ("nginx proxy_cache, 1 worker", nginx, 1),
                   ("fbstream PoP, %d workers" % (args.workers,), pop, args.workers),
                   ("nginx proxy_cache, %d workers" % (args.workers,), nginx, args.workers)]
        print("Viewers of one live stream (%d kbps video + 64 kbps audio, 1 s segments) each server held with "
              "rebuffer < 1%%, TTFB p99 < 500 ms, no errors; %d s steps, %d load generator processes, %d cores"
              % (args.kbps, args.seconds, args.generators, os.cpu_count() or 1), flush=True)
        port, proc, log = nginx(1)
        wait_port(port, proc, "nginx", log)
        alone = step("http://127.0.0.1:%d" % (port,), args.generator_viewers, max(args.seconds, 20.0), 1, work)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        cores, rate = alone["generator_cores"], alone["requests_per_second"]
        print("Load generator alone (one process, %d viewers, against nginx with 1 worker): %.2f of a core for "
              "%.0f requests/s, %.0f us a request: %.0f simulated viewers per core (rebuffer %.2f%%, TTFB p99 "
              "%.0f ms, errors %d)%s" % (
                  args.generator_viewers, cores, rate, 1e6 * cores / rate if rate else 0.0,
                  args.generator_viewers / cores if cores else 0.0, 100 * alone["rebuffer"],
                  1000 * alone["ttfb_p99"], alone["errors"],
                  "  (it saturated its core: more viewers than one core simulates)" if alone["saturated"] else ""),
              flush=True)
        held_by: dict[str, int] = {}
        per_core: list[float] = []
        for name, start, workers in servers:
            port, proc, log = start(workers)
            wait_port(port, proc, name, log)
            url = "http://127.0.0.1:%d" % (port,)
            held = 0
            for viewers in steps:
                figures = step(url, viewers, args.seconds, args.generators, work)
                if figures["generator_cores"] > 0:
                    per_core.append(viewers / figures["generator_cores"])
                print("  %-30s %6d viewers: rebuffer %6.2f%%  TTFB p99 %5.0f ms  errors %d  %6.0f req/s  "
                      "generators %.2f cores%s%s" % (
                          name, viewers, 100 * figures["rebuffer"], 1000 * figures["ttfb_p99"], figures["errors"],
                          figures["requests_per_second"], figures["generator_cores"],
                          "  (a generator saturated: its figures are its own)" if figures["saturated"] else "",
                          "" if figures["held"] else "  <- not held"), flush=True)
                if not figures["held"]:
                    break
                held = viewers
            held_by[name] = held
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        print("Held:")
        for name, held in held_by.items():
            print("  %-30s %6d viewers" % (name, held))
        names = list(held_by)
        for ours, theirs in ((names[0], names[1]), (names[2], names[3])):
            if held_by[theirs]:
                print("  ratio %s / %s: %.2f" % (ours, theirs, held_by[ours] / held_by[theirs]))
        if per_core:
            print("Load generator, sharing the cores with the server: %.0f simulated viewers per core (median over "
                  "the steps)"
                  % (sorted(per_core)[len(per_core) // 2],))
    except (Broken, subprocess.TimeoutExpired) as e:
        print("the bench broke: %s" % (e,), file=sys.stderr)
        return 1
    finally:
        stop_all(procs)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
