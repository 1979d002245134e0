"""
What one PoP process serves, against nginx's proxy_cache on the same machine
in the same run:

1. Requests per second and MB/s of cached 1-second segments of a 500 kbps
   rendition (wrk, 64 connections, rotating over 60 segments), from one PoP
   process (proxy and cache layers) and from one nginx worker with
   proxy_cache in front of the same upstream; then from a PoP with two
   worker processes (``pop.workers = 2``) and nginx with two workers. Neither
   writes an access log.
2. The herd: 2,000 viewers joining within one second on a segment no cache
   holds yet: upstream requests for it, and p50/p99 time to first byte.

    python bench/pop_serve.py   (needs nginx and wrk: apt-get install nginx wrk)
    python bench/pop_serve.py --smoke    (CI: 2 s of wrk each, a herd of 200)

The exit status is non-zero only if the bench itself broke (nginx or wrk
missing, a server that does not come up, no answered request), never on a
figure.
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
import urllib.request
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEGMENT_BYTES = 500_000 // 8  # one second at 500 kbps
SEGMENTS = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broken(Exception):
    """The bench itself broke (not a slow figure)."""


def tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def wait_port(port: int, proc: subprocess.Popen[bytes], name: str, log: str = "", timeout: float = 30) -> None:
    """Wait for ``proc`` to listen on ``port``; it dying or never listening breaks the bench."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Broken("%s exited with status %s before listening on %d\n%s"
                         % (name, proc.returncode, port, tail(log)))
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise Broken("%s does not listen on %d after %.0f s\n%s" % (name, port, timeout, tail(log)))


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
worker_processes {workers};
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


def wrk(url_base: str, seconds: float) -> tuple[float, float, int]:
    """(requests/s, MB/s, non-2xx/3xx answers) over the 60 segments, with wrk."""
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write(
        "counter = 0\n"
        "request = function()\n"
        "  counter = counter + 1\n"
        "  return wrk.format('GET', '/live/bench/500k/' .. (counter %% %d + 1) .. '.m4s')\n"
        "end\n" % (SEGMENTS,)
    )
    script.close()
    try:
        run = subprocess.run(
            ["wrk", "-t2", "-c64", "-d%ds" % (seconds,), "-s", script.name, url_base],
            capture_output=True, text=True, timeout=seconds + 60,
        )
    finally:
        os.unlink(script.name)
    out = run.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    if run.returncode != 0 or rps is None or transfer is None:
        raise Broken("wrk failed (status %d):\n%s%s" % (run.returncode, out, run.stderr))
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    scale = {"B": 1e-6, "KB": 1e-3, "MB": 1.0, "GB": 1e3}[transfer.group(2)]
    return float(rps.group(1)), float(transfer.group(1)) * scale, int(errors.group(1)) if errors else 0


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
    run = subprocess.run([sys.executable, "-c", code, url, str(viewers)], capture_output=True, text=True,
                         timeout=120)
    if run.returncode != 0:
        raise Broken("the herd's client failed (status %d):\n%s" % (run.returncode, run.stderr[-2000:]))
    return [float(v) for v in run.stdout.split()]


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p * (len(values) - 1)))]


def upstream_counts(port: int) -> dict[str, int]:
    import ast

    with urllib.request.urlopen("http://127.0.0.1:%d/counts" % (port,), timeout=10) as f:
        return ast.literal_eval(f.read().decode())


def warm(base: str) -> None:
    """Fetch the 60 segments once through a cache, all at once (each miss waits on the upstream)."""
    def get(n: int) -> None:
        urllib.request.urlopen("%s/live/bench/500k/%d.m4s" % (base, n), timeout=30).read()

    try:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(get, range(1, SEGMENTS + 1)))
    except OSError as e:
        raise Broken("warming %s failed: %s" % (base, e)) from None


def start_pop(procs: list[subprocess.Popen[bytes]], work: str, upstream: int, workers: int,
              *settings: str) -> tuple[int, subprocess.Popen[bytes], str]:
    """
    A PoP (``twistd fbstream --role=pop``, this tree's code) with ``workers``
    processes, its cache layer fetching from ``upstream``, no access log (as
    nginx here), no per-address limit (the load comes from loopback): its
    viewers' port, its process and its log.
    """
    pop, cache = free_port(), free_port()
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    log_path = os.path.join(work, "pop-%d.log" % (workers,))
    with open(log_path, "wb") as log:
        procs.append(subprocess.Popen(
            [twistd if os.path.exists(twistd) else "twistd", "-n", "--pidfile=", "fbstream", "--role=pop",
             "--set", "rtmp.listen=tcp:%d:interface=127.0.0.1" % (free_port(),),
             "--set", "http.listen=tcp:%d:interface=127.0.0.1:backlog=4096" % (pop,),
             "--set", "pop.cache_listen=tcp:%d:interface=127.0.0.1" % (cache,),
             "--set", "pop.cache_hosts=tcp:127.0.0.1:%d" % (cache,),
             "--set", "pop.origins=tcp:127.0.0.1:%d" % (upstream,),
             "--set", "pop.workers=%d" % (workers,),
             "--set", "http.max_connections_per_address=0", "--set", "http.access_log=off",
             *[arg for setting in settings for arg in ("--set", setting)]],
            cwd=work, stdout=log, stderr=subprocess.STDOUT,
            # The working tree's fbstream, not a copy installed in the venv.
            env=dict(os.environ, PYTHONPATH=ROOT)))
    return pop, procs[-1], log_path


def start_nginx(procs: list[subprocess.Popen[bytes]], work: str, conf: str, upstream: int,
                workers: int) -> tuple[int, subprocess.Popen[bytes], str]:
    """nginx with ``conf`` (its port, upstream, workers and directory filled in): its port, process and error log."""
    port = free_port()
    where = os.path.join(work, "nginx-%d-%d" % (workers, port))  # one of its own, however many are started
    os.makedirs(where)
    with open(os.path.join(where, "nginx.conf"), "w") as f:
        f.write(conf.format(dir=where, port=port, upstream=upstream, workers=workers))
    procs.append(subprocess.Popen(["nginx", "-c", os.path.join(where, "nginx.conf"), "-g", "daemon off;"]))
    return port, procs[-1], os.path.join(where, "error.log")


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--viewers", type=int, default=2000)
    parser.add_argument("--smoke", action="store_true", help="2 s of wrk per server, a herd of 200 (for CI)")
    args = parser.parse_args()
    if args.upstream:
        upstream(args.upstream, delay=0.2)
        return 0
    if args.smoke:
        args.seconds, args.viewers = 2, 200
    missing = [tool for tool in ("nginx", "wrk") if shutil.which(tool) is None]
    if missing:
        print("the bench broke: %s not installed (apt-get install -y nginx wrk)"
              % (" and ".join(missing) + (" is" if len(missing) == 1 else " are"),), file=sys.stderr)
        return 1
    work = tempfile.mkdtemp(prefix="fbstream-bench-")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        up = free_port()
        procs.append(subprocess.Popen([sys.executable, __file__, "--upstream", str(up)]))
        wait_port(up, procs[-1], "the upstream")
        servers = [("fbstream PoP (one process)", start_pop(procs, work, up, 1)),
                   ("nginx proxy_cache (one worker)", start_nginx(procs, work, NGINX_CONF, up, 1)),
                   ("fbstream PoP (2 workers)", start_pop(procs, work, up, 2)),
                   ("nginx proxy_cache (2 workers)", start_nginx(procs, work, NGINX_CONF, up, 2))]
        for name, (port, proc, log_path) in servers:
            wait_port(port, proc, name, log_path)
            warm("http://127.0.0.1:%d" % (port,))
        pop, ng = servers[0][1][0], servers[1][1][0]
        print("Cached 1 s segments of a 500 kbps rendition (%d B), wrk -t2 -c64 -d%ds, %d cores"
              % (SEGMENT_BYTES, args.seconds, os.cpu_count() or 1))
        results = {}
        for name, (port, _, _) in servers:
            rps, mbs, errors = wrk("http://127.0.0.1:%d" % (port,), args.seconds)
            if rps == 0:
                raise Broken("%s answered no request under wrk" % (name,))
            results[name] = rps
            print("  %-32s %10.0f req/s %10.1f MB/s%s"
                  % (name, rps, mbs, "  (%d answers not 2xx/3xx)" % (errors,) if errors else ""))
            sys.stdout.flush()
        names = list(results)
        print("  ratio fbstream / nginx: %.2f with one process each, %.2f with two"
              % (results[names[0]] / results[names[1]], results[names[2]] / results[names[3]]))
        print("Herd: %d viewers joining within 1 s on a segment no cache holds (upstream answers in 200 ms)"
              % (args.viewers,))
        for name, port, number in (("fbstream PoP", pop, 1001), ("nginx proxy_cache", ng, 1002)):
            path = "/live/bench/500k/%d.m4s" % (number,)
            ttfb = [t for t in herd("http://127.0.0.1:%d%s" % (port, path), args.viewers) if t == t]
            if not ttfb:
                raise Broken("%s answered none of the herd's %d requests" % (name, args.viewers))
            count = upstream_counts(up).get(path, 0)
            print("  %-20s upstream requests %d; TTFB p50 %.0f ms, p99 %.0f ms (%d answered)"
                  % (name, count, statistics.median(ttfb) * 1000, percentile(ttfb, 0.99) * 1000, len(ttfb)))
            sys.stdout.flush()
    except (Broken, subprocess.TimeoutExpired) as e:
        print("the bench broke: %s" % (e,), file=sys.stderr)
        return 1
    finally:
        stop_all(procs)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
