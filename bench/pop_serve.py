"""
What one PoP process serves, against nginx's proxy_cache on the same machine
in the same run:

1. Requests per second and MB/s of cached 1-second segments of a 500 kbps
   rendition (wrk, 64 connections, rotating over 60 segments), from one PoP
   process (proxy and cache layers) and from one nginx worker with
   proxy_cache in front of the same upstream.
2. The herd: 2,000 viewers joining within one second on a segment no cache
   holds yet: upstream requests for it, and p50/p99 time to first byte.

    python bench/pop_serve.py   (needs nginx and wrk: apt-get install nginx wrk)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

SEGMENT_BYTES = 500_000 // 8  # one second at 500 kbps
SEGMENTS = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError("nothing listens on %d" % (port,))


def upstream(port: int, delay: float) -> None:
    """The origin both caches fetch from: numbered segments, counted."""
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET, Site

    counts: dict[bytes, int] = {}

    class Segments(Resource):
        isLeaf = True

        def render_GET(self, request):  # type: ignore[no-untyped-def]
            path = request.path
            if path == b"/counts":
                return repr({k.decode(): v for k, v in counts.items()}).encode()
            counts[path] = counts.get(path, 0) + 1

            def answer() -> None:
                if request._disconnected:
                    return
                request.setHeader(b"content-type", b"video/mp4")
                request.setHeader(b"cache-control", b"public, max-age=31536000, immutable")
                request.write(path.ljust(SEGMENT_BYTES, b"."))
                request.finish()

            reactor.callLater(delay, answer)
            return NOT_DONE_YET

    reactor.listenTCP(port, Site(Segments()), interface="127.0.0.1", backlog=4096)
    reactor.run()


NGINX_CONF = """
user root;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    proxy_cache_path {dir}/cache levels=1:2 keys_zone=seg:32m max_size=1g inactive=1h use_temp_path=off;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache seg;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 5s;
        }}
    }}
}}
"""


def wrk(url_base: str, seconds: int) -> tuple[float, float]:
    """(requests/s, MB/s) over the 60 segments, with wrk."""
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write(
        "counter = 0\n"
        "request = function()\n"
        "  counter = counter + 1\n"
        "  return wrk.format('GET', '/live/bench/500k/' .. (counter %% %d + 1) .. '.m4s')\n"
        "end\n" % (SEGMENTS,)
    )
    script.close()
    out = subprocess.run(
        ["wrk", "-t2", "-c64", "-d%ds" % (seconds,), "-s", script.name, url_base],
        capture_output=True, text=True, check=True,
    ).stdout
    os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    scale = {"B": 1e-6, "KB": 1e-3, "MB": 1.0, "GB": 1e3}[transfer.group(2)]
    return rps, float(transfer.group(1)) * scale


def herd(url: str, viewers: int) -> list[float]:
    """TTFB of ``viewers`` GETs started evenly within one second (Twisted client)."""
    code = r'''
import sys, time, resource
from twisted.internet import reactor, defer
from twisted.web.client import Agent, HTTPConnectionPool
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
url, n = sys.argv[1].encode(), int(sys.argv[2])
agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
ttfb = []
def one():
    began = time.monotonic()
    d = agent.request(b"GET", url)
    def got(response):
        ttfb.append(time.monotonic() - began)
        response.deliverBody(__import__("twisted.internet.protocol", fromlist=["Protocol"]).Protocol())
    d.addCallbacks(got, lambda f: ttfb.append(float("nan")))
    return d
ds = []
def start(i):
    ds.append(one())
    if len(ds) == n:
        defer.DeferredList(ds).addBoth(lambda _: reactor.callLater(0.5, reactor.stop))
for i in range(n):
    reactor.callLater(i / n, start, i)
reactor.run()
print(" ".join("%.6f" % t for t in ttfb))
'''
    out = subprocess.run([sys.executable, "-c", code, url, str(viewers)], capture_output=True, text=True, check=True)
    return [float(v) for v in out.stdout.split()]


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p * (len(values) - 1))))]


def upstream_counts(port: int) -> dict[str, int]:
    import ast
    import urllib.request

    with urllib.request.urlopen("http://127.0.0.1:%d/counts" % (port,)) as f:
        return ast.literal_eval(f.read().decode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--viewers", type=int, default=2000)
    args = parser.parse_args()
    if args.upstream:
        upstream(args.upstream, delay=0.2)
        return
    work = tempfile.mkdtemp()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        up = free_port()
        procs.append(subprocess.Popen([sys.executable, __file__, "--upstream", str(up)]))
        wait_port(up)
        pop, cache = free_port(), free_port()
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        procs.append(subprocess.Popen(
            [twistd if os.path.exists(twistd) else "twistd", "-n", "--pidfile=", "--logfile=/dev/null",
             "fbstream", "--role=pop",
             "--set", "rtmp.listen=tcp:%d:interface=127.0.0.1" % (free_port(),),
             "--set", "http.listen=tcp:%d:interface=127.0.0.1:backlog=4096" % (pop,),
             "--set", "pop.cache_listen=tcp:%d:interface=127.0.0.1" % (cache,),
             "--set", "pop.cache_hosts=tcp:127.0.0.1:%d" % (cache,),
             "--set", "pop.origins=tcp:127.0.0.1:%d" % (up,)],
            cwd=work))
        ng = free_port()
        with open(os.path.join(work, "nginx.conf"), "w") as f:
            f.write(NGINX_CONF.format(dir=work, port=ng, upstream=up))
        procs.append(subprocess.Popen(["nginx", "-c", os.path.join(work, "nginx.conf"), "-g", "daemon off;"]))
        wait_port(pop)
        wait_port(ng)
        for base in ("http://127.0.0.1:%d" % (pop,), "http://127.0.0.1:%d" % (ng,)):
            import urllib.request

            for n in range(1, SEGMENTS + 1):
                urllib.request.urlopen("%s/live/bench/500k/%d.m4s" % (base, n)).read()
        print("Cached 1 s segments of a 500 kbps rendition (%d B), wrk -t2 -c64 -d%ds, 2 cores"
              % (SEGMENT_BYTES, args.seconds))
        results = {}
        for name, port in (("fbstream PoP (one process)", pop), ("nginx proxy_cache (one worker)", ng)):
            rps, mbs = wrk("http://127.0.0.1:%d" % (port,), args.seconds)
            results[name] = rps
            print("  %-32s %10.0f req/s %10.1f MB/s" % (name, rps, mbs))
        names = list(results)
        print("  ratio fbstream / nginx: %.2f" % (results[names[0]] / results[names[1]],))
        print("Herd: %d viewers joining within 1 s on a segment no cache holds (upstream answers in 200 ms)"
              % (args.viewers,))
        for name, port, number in (("fbstream PoP", pop, 1001), ("nginx proxy_cache", ng, 1002)):
            path = "/live/bench/500k/%d.m4s" % (number,)
            ttfb = [t for t in herd("http://127.0.0.1:%d%s" % (port, path), args.viewers) if t == t]
            count = upstream_counts(up).get(path, 0)
            print("  %-20s upstream requests %d; TTFB p50 %.0f ms, p99 %.0f ms (%d answered)"
                  % (name, count, statistics.median(ttfb) * 1000, percentile(ttfb, 0.99) * 1000, len(ttfb)))
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
