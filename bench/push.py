"""
The push channel against TTL pulls (issue 12), in two set-ups, each run
twice: once with the push channel on (the encoder pushing to the origin, the
origin to the PoPs' cache layers, over HTTP/2), once with it off (every tier
pulls; manifests and playlists kept for their ``max-age`` of 1 s).

**One stream, one process** (the default): ``twistd fbstream --role=all
--demo``. One poller asks the encoder and the PoP (its viewers' port,
through both PoP layers) for the 720p LL-HLS media playlist every few
milliseconds over kept-alive connections, and notes when each new version
(its newest part) is first seen at each. It measures:

- playlist staleness at the PoP: from a version's first sight at the
  encoder to the PoP first showing it or a newer one (p50, p99), and how
  many versions the PoP never showed;
- each new part at the PoP: the moment a part is listed at the encoder, the
  poller asks the PoP's cache layer for it and times the answer, noting
  whether it already held it (``X-Cache: HIT``, as a push leaves it) or had
  to fetch it from the data center;
- the process's CPU seconds per second (every role shares it).

**Many streams, one process per role** (``--processes``): the roles as a
user who outgrew one machine runs them, each its own ``twistd fbstream
--role=...`` on loopback (``tests/integration/topology.py``'s nodes): one
encoder and one origin, both on a real etcd for the registry, and four PoP
cache hosts (one PoP of four hosts: each host's proxy layer shards over
all four cache layers, whose ``push.origins`` is the origin). Twenty
streams are published straight to the encoder, each kept cheap for a
2-core machine (see ``SOURCE``). Every cache host is asked for every
stream's playlist every few seconds, as viewers would: that subscribes it
(push) or keeps it fetching (TTL). Then, per mode, the same figures as
above at each cache host, with an honest cut time: each part's cut is the
moment the encoder answers an LL-HLS blocking reload for it (the part its
playlist's preload hint names), that is, the moment the encoder's own
playlist first lists it. Watching 80 pairs of stream and cache host at a
few milliseconds each would take more of the machine than the streams do,
so each cache host watches one stream at a time, for an equal share of the
run, every stream in turn: after each cut it asks the host for the playlist
at once, again every 2 to 5 ms while the version is under 50 ms old, and
every 25 ms after that (the resolution of a staleness figure), and asks it
for the new part the moment it is cut. Besides those figures: the origin
process's CPU seconds per second (``/proc/<pid>/stat``) divided by the
cache hosts subscribed to it (with TTL: by the cache hosts it serves), the
encoder's and each cache host's CPU, pushes sent and given up at the
origin, and frames the encoder shed.

    python bench/push.py                          (one stream: 2 x 30 s)
    python bench/push.py --seconds 60
    python bench/push.py --smoke                  (CI: 2 x 6 s)
    python bench/push.py --processes              (20 streams, 4 PoP cache hosts: 2 x 60 s)
    python bench/push.py --processes --streams 8 --pops 2 --seconds 30
    python bench/push.py --processes --smoke      (CI: 4 streams, 2 cache hosts, 2 x 8 s)
    python bench/push.py --core [--smoke]         (the sans-IO core alone, per push)

**The core alone** (``--core``): what one push costs each end of a
connection in CPU, with no sockets and no reactor: a publisher pushes a
stream's objects as the encoder does (per part: the part, and a new
playlist version), each with a cache's headers and a body of a 144p part,
and a subscriber reads them. This is the cost that decides how many PoP
cache hosts one origin core can push to.

Not measured here: the players' latency with and without push
(``bench/playback.py`` runs with push on).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import treq
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from fbstream.live.tokens import KeyRing  # noqa: E402
from tests.integration.conftest import Etcd, free_port, sleep, tool  # noqa: E402
from tests.integration.test_twistd import all_role_process  # noqa: E402
from tests.integration.topology import TOKEN_KEYS, Node  # noqa: E402

PLAYLIST = "/live/demo/720p/playlist.m3u8"
PART = re.compile(rb'#EXT-X-PART:[^\n]*URI="([0-9]+\.[0-9]+\.m4s)"')


class Keeper:
    """GETs over one kept-alive HTTP/1.1 connection (made again if lost)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        for attempt in (1, 2):
            try:
                self.connection.request("GET", path)
                response = self.connection.getresponse()
                return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
            except (http.client.HTTPException, OSError):
                self.connection.close()
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def newest_part(body: bytes) -> str | None:
    parts = PART.findall(body)
    return parts[-1].decode() if parts else None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    with open("/proc/%d/stat" % (pid,)) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def twistd_pid(ports: dict[str, int]) -> int | None:
    """The pid listening on the PoP's port (the all role's process)."""
    wanted = ":%04X" % (ports["pop"],)
    inodes = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1].endswith(wanted) and fields[3] == "0A":
                inodes.add(fields[9])
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir("/proc/%s/fd" % (pid,)):
                link = os.readlink("/proc/%s/fd/%s" % (pid, fd))
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(pid)
        except OSError:
            continue
    return None


def measure(push: bool, seconds: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="fbstream-push-") as directory, \
            all_role_process(Path(directory), push=push) as (ports, log):
        pop, encoder, cache = Keeper(ports["pop"]), Keeper(ports["encoder"]), Keeper(ports["cache"])
        deadline = time.monotonic() + 60
        while True:
            try:
                if pop.get(PLAYLIST)[0] == 200 and newest_part(pop.get(PLAYLIST)[2]):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the demo never played at the PoP:\n" + log.read_text()[-3000:])
            time.sleep(0.2)
        time.sleep(3)  # subscribed, and past the first versions
        pid = twistd_pid(ports)
        cpu0 = cpu_seconds(pid) if pid else 0.0
        at_encoder: dict[str, float] = {}
        at_pop: dict[str, float] = {}
        parts: list[tuple[float, bool]] = []
        began = time.monotonic()
        while time.monotonic() - began < seconds:
            status, _, body = encoder.get(PLAYLIST)
            now = time.monotonic()
            part = newest_part(body) if status == 200 else None
            if part and part not in at_encoder:
                at_encoder[part] = now
                # The part, asked for at the PoP's cache layer the moment it is listed.
                code, headers, _ = cache.get("/live/demo/720p/" + part)
                if code == 200:
                    parts.append((time.monotonic() - now, headers.get("x-cache", "").startswith("HIT")))
            status, _, body = pop.get(PLAYLIST)
            part = newest_part(body) if status == 200 else None
            if part and part not in at_pop:
                at_pop[part] = time.monotonic()
            time.sleep(0.003)
        elapsed = time.monotonic() - began
        cpu = (cpu_seconds(pid) - cpu0) / elapsed if pid else float("nan")
        # Each version's staleness: until the PoP shows it or a newer one
        # (with TTL the PoP skips most versions: it shows the next later).
        order = sorted(at_encoder, key=at_encoder.__getitem__)
        stale = []
        for i, version in enumerate(order):
            shown = [at_pop[v] for v in order[i:] if v in at_pop]
            if shown:
                stale.append(max(0.0, min(shown) - at_encoder[version]))
        waits = [w for w, _ in parts]
        return {
            "mode": "push" if push else "TTL",
            "versions": len(at_encoder),
            "stale_p50_ms": 1000 * statistics.median(stale) if stale else float("nan"),
            "stale_p99_ms": 1000 * percentile(stale, 0.99) if stale else float("nan"),
            "missed": len([p for p in at_encoder if p not in at_pop]),
            "part_p50_ms": 1000 * statistics.median(waits) if waits else float("nan"),
            "part_p99_ms": 1000 * percentile(waits, 0.99) if waits else float("nan"),
            "held": sum(1 for _, hit in parts if hit),
            "parts": len(parts),
            "cpu": cpu,
        }


# The roles as separate processes ------------------------------------------------

#: Each published stream: a small test pattern, made once by the ffmpeg tool
#: and published by it in real time without re-encoding (``-c copy``), no
#: audio; the encoder's ladder is one rung, so each stream is one 144p
#: rendition of 1 s segments in 4 parts of 250 ms (2 frames each).
SOURCE = {"size": "256x144", "rate": 8, "kbps": 150}
LADDER = '["144:150"]'
RENDITION = "144p"
HINT = re.compile(rb'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="([0-9]+)\.([0-9]+)\.m4s"')
#: Seconds between a cache host's viewers asking for each stream (the
#: push channel unsubscribes a stream no one asked for in 30 s).
VIEWER_INTERVAL = 10.0
#: How long a watched version may take to show at a cache host before it
#: counts as not shown at all.
DRAIN = 3.0


def part_of(name: str) -> tuple[int, int]:
    number, index, _ = name.split(".")
    return int(number), int(index)


def make_source(directory: str, seconds: float) -> str:
    """``seconds`` of SOURCE as FLV, made faster than real time."""
    path = os.path.join(directory, "source.flv")
    subprocess.run(
        [tool("ffmpeg"), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", "testsrc2=size=%s:rate=%d" % (SOURCE["size"], SOURCE["rate"]), "-t", "%d" % (seconds,),
         "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", str(SOURCE["rate"]),
         "-b:v", "%dk" % (SOURCE["kbps"],), "-pix_fmt", "yuv420p", "-f", "flv", path],
        check=True)
    return path


class DataCenter:
    """
    One encoder, one origin and ``pops`` PoP cache hosts, each its own
    ``twistd fbstream --role=...`` on loopback; the encoder and the origin
    find each other's streams in etcd. With ``push`` the channel runs
    encoder -> origin -> every cache host; without, every tier pulls.
    """

    def __init__(self, directory: str, etcd_url: str, streams: int, pops: int, push: bool) -> None:
        self.directory = directory
        registry = ["registry.backend=etcd", "registry.etcd=%s" % (etcd_url,),
                    "registry.prefix=/bench%d" % (free_port(),)]
        encoder_push, origin_push = free_port(), free_port()
        self.rtmp = free_port()
        self.encoder = Node("encoder", "encoder", [], directory)
        self.encoder.args = _sets(
            "rtmp.listen=tcp:%d:interface=127.0.0.1" % (self.rtmp,),
            "encoder.name=encoder0",
            "encoder.advertise_http=tcp:127.0.0.1:%d" % (self.encoder.http,),
            "encoder.ladder=%s" % (LADDER,),
            "encoder.max_streams=%d" % (streams,),
            'archive.dir=""',
            "push.listen=%s" % ("tcp:%d:interface=127.0.0.1" % (encoder_push,) if push else "[]",),
            *registry)
        self.origin = Node("origin", "origin", _sets(
            "origin.upstreams=tcp:127.0.0.1:%d" % (self.encoder.http,),
            "push.listen=%s" % ("tcp:%d:interface=127.0.0.1" % (origin_push,) if push else "[]",),
            "push.upstreams=tcp:127.0.0.1:%d" % (encoder_push,),
            *registry), directory)
        self.caches = [free_port() for _ in range(pops)]
        hosts = json.dumps(["tcp:127.0.0.1:%d" % (port,) for port in self.caches])
        self.pops = [Node("pop%d" % (i,), "pop", _sets(
            "rtmp.listen=[]", "relay.dc_proxies=[]",
            "pop.cache_listen=tcp:%d:interface=127.0.0.1" % (port,),
            "pop.cache_hosts=%s" % (hosts,),
            "pop.origins=tcp:127.0.0.1:%d" % (self.origin.http,),
            "push.origins=%s" % ("tcp:127.0.0.1:%d" % (origin_push,) if push else "[]",),
            "pop.player_dir=%s" % (os.path.join(ROOT, "web", "node_modules"),)), directory)
            for i, port in enumerate(self.caches)]
        self.publishers: list[subprocess.Popen[bytes]] = []

    def nodes(self) -> list[Node]:
        return [self.encoder, self.origin, *self.pops]

    def start(self) -> None:
        with ThreadPoolExecutor(len(self.nodes())) as starting:
            list(starting.map(Node.start, self.nodes()))

    def publish(self, source: str, names: list[str]) -> None:
        """Each of ``names`` published to the encoder with a stream token, as a broadcaster does."""
        keys = KeyRing.parse(TOKEN_KEYS)
        for name in names:
            url = "rtmp://127.0.0.1:%d/live/%s?token=%s" % (self.rtmp, name, keys.sign(name, "dc1", time.time()))
            with open(os.path.join(self.directory, name + ".ffmpeg.log"), "wb") as log:
                self.publishers.append(subprocess.Popen(
                    [tool("ffmpeg"), "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-i", source,
                     "-c", "copy", "-f", "flv", url], stdout=log, stderr=subprocess.STDOUT))

    def stop(self) -> None:
        for publisher in self.publishers:
            publisher.kill()
            publisher.wait()
        for node in self.nodes():
            node.kill()

    def url(self, node: Node) -> str:
        return "http://127.0.0.1:%d" % (node.http,)


def _sets(*settings: str) -> list[str]:
    return [a for setting in settings for a in ("--set", setting)]


class Getter:
    """GETs over kept-alive connections, each timed when its whole body has come."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 8
        self.agent = Agent(reactor, pool=self.pool)
        self.requests = 0
        self.failures = 0

    @inlineCallbacks
    def get(self, url: str) -> Any:
        """(status, headers, body, time.monotonic() at its end); status 0 if it failed."""
        self.requests += 1
        try:
            response = yield self.agent.request(b"GET", url.encode()).addTimeout(10, self.reactor)
            body = yield treq.content(response).addTimeout(10, self.reactor)
        except Exception:
            self.failures += 1
            return 0, None, b"", time.monotonic()
        return response.code, response.headers, body, time.monotonic()

    def close(self) -> Deferred[None]:
        return self.pool.closeCachedConnections()


class Cuts:
    """
    When each new part of one stream is cut, told to every listener: an
    LL-HLS blocking reload for the part the encoder's playlist names next
    (its preload hint) is answered the moment the encoder lists that part.
    An answer that lists a newer part than the one asked for (the reload
    came late) times no cut.
    """

    def __init__(self, reactor: Any, getter: Getter, encoder: str, stream: str) -> None:
        self.reactor = reactor
        self.getter = getter
        self.url = "%s/live/%s/%s/playlist.m3u8" % (encoder, stream, RENDITION)
        self.listeners: list[Callable[[tuple[int, int], float], None]] = []
        self.running = False
        self.untimed = 0

    def listen(self, listener: Callable[[tuple[int, int], float], None]) -> None:
        self.listeners.append(listener)
        if not self.running:
            self.running = True
            self._run()

    def unlisten(self, listener: Callable[[tuple[int, int], float], None]) -> None:
        self.listeners.remove(listener)

    @inlineCallbacks
    def _run(self) -> Any:
        try:
            code, _, body, _ = yield self.getter.get(self.url)
            while self.listeners:
                hint = HINT.search(body) if code == 200 else None
                if hint is None:
                    yield sleep(0.1)
                    code, _, body, _ = yield self.getter.get(self.url)
                    continue
                wanted = int(hint.group(1)), int(hint.group(2))
                code, _, body, at = yield self.getter.get("%s?_HLS_msn=%d&_HLS_part=%d" % (self.url, *wanted))
                newest = newest_part(body) if code == 200 else None
                if newest is not None and part_of(newest) == wanted:
                    for listener in list(self.listeners):
                        listener(wanted, at)
                else:
                    self.untimed += 1
        finally:
            self.running = False


class Figures:
    """What one cache host showed of the versions and parts it was watched for."""

    def __init__(self) -> None:
        self.versions = 0
        self.stale: list[float] = []
        self.never = 0
        self.late = 0
        self.parts: list[float] = []
        self.held = 0
        self.part_failures = 0

    def add(self, other: Figures) -> None:
        for name in ("versions", "never", "late", "held", "part_failures"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.stale += other.stale
        self.parts += other.parts


class Watch:
    """
    One cache host watched for one stream's new parts for a while: after
    each cut it is asked for the playlist at once, then every few ms until
    it shows that part or a newer one, and for the part itself.
    """

    def __init__(self, reactor: Any, getter: Getter, cuts: Cuts, cache: str, stream: str,
                 figures: Figures) -> None:
        self.reactor = reactor
        self.getter = getter
        self.cuts = cuts
        self.playlist = "%s/live/%s/%s/playlist.m3u8" % (cache, stream, RENDITION)
        self.parts = "%s/live/%s/%s/" % (cache, stream, RENDITION)
        self.figures = figures
        #: Parts cut and not yet shown here -> when they were cut.
        self.pending: dict[tuple[int, int], float] = {}
        self.closed = False
        self._wake: Deferred[None] | None = None
        self._fetching: list[Deferred[Any]] = []

    @inlineCallbacks
    def run(self, seconds: float) -> Any:
        self.cuts.listen(self._cut)
        self.reactor.callLater(seconds, self._close)
        while True:
            if not self.pending:
                if self.closed:
                    yield DeferredList(self._fetching)
                    return
                yield self._sleep(1.0)
                continue
            code, _, body, at = yield self.getter.get(self.playlist)
            shown = newest_part(body) if code == 200 else None
            if shown is not None:
                newest = part_of(shown)
                for part, cut in list(self.pending.items()):
                    if part <= newest:
                        del self.pending[part]
                        self.figures.stale.append(at - cut)
                        if part != newest:
                            self.figures.never += 1
            now = time.monotonic()
            for part, cut in list(self.pending.items()):
                if now - cut > DRAIN:
                    del self.pending[part]
                    self.figures.late += 1
            if self.pending:
                age = now - min(self.pending.values())
                yield self._sleep(0.002 if age < 0.01 else 0.005 if age < 0.05 else 0.025)

    def _close(self) -> None:
        self.cuts.unlisten(self._cut)
        self.closed = True
        self._wakeup()

    def _cut(self, part: tuple[int, int], at: float) -> None:
        self.pending[part] = at
        self.figures.versions += 1
        self._fetching.append(self._fetch_part(part, at))
        self._wakeup()

    @inlineCallbacks
    def _fetch_part(self, part: tuple[int, int], cut: float) -> Any:
        code, headers, _, at = yield self.getter.get(self.parts + "%d.%d.m4s" % part)
        if code != 200:
            self.figures.part_failures += 1
            return
        self.figures.parts.append(at - cut)
        if (headers.getRawHeaders(b"x-cache") or [b""])[0].startswith(b"HIT"):
            self.figures.held += 1

    def _sleep(self, seconds: float) -> Deferred[None]:
        """Until ``seconds`` pass or the next cut, whichever is first."""
        d: Deferred[None] = Deferred()
        timer = self.reactor.callLater(seconds, d.callback, None)

        def done(result: None) -> None:
            self._wake = None
            if timer.active():
                timer.cancel()

        self._wake = d
        return d.addCallback(done)

    def _wakeup(self) -> None:
        if self._wake is not None and not self._wake.called:
            self._wake.callback(None)


def metric(text: str, name: str, tier: str | None = None) -> float:
    """The sum of ``name``'s samples (of ``tier`` only, if given) in a /metrics page."""
    total = 0.0
    for match in re.finditer(r"^%s(\{[^}]*\})? ([0-9.e+-]+)$" % (re.escape(name),), text, re.M):
        if tier is None or 'tier="%s"' % (tier,) in (match.group(1) or ""):
            total += float(match.group(2))
    return total


def lag_quantile(before: str, after: str, tier: str, q: float) -> float:
    """
    The ``q`` quantile of the push lag at ``tier`` (seconds) over a run, from
    its histogram's buckets before and after (interpolated within a bucket,
    as Prometheus's histogram_quantile does).
    """
    def buckets(text: str) -> list[tuple[float, float]]:
        found = []
        for labels, n in re.findall(r"^fbstream_push_lag_seconds_bucket\{([^}]*)\} ([0-9.e+-]+)$", text, re.M):
            fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            if fields.get("tier") == tier and "le" in fields:
                found.append((float(fields["le"]), float(n)))
        return sorted(found)
    counts = [(le, n - dict(buckets(before)).get(le, 0.0)) for le, n in buckets(after)]
    if not counts or counts[-1][1] <= 0:
        return float("nan")
    rank, lower, below = q * counts[-1][1], 0.0, 0.0
    for le, n in counts:
        if n >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * (rank - below) / max(n - below, 1e-9)
        lower, below = le, n
    return lower


@inlineCallbacks
def metrics_of(getter: Getter, base: str) -> Any:
    _, _, body, _ = yield getter.get(base + "/metrics")
    return body.decode(errors="replace")


@inlineCallbacks
def viewers(reactor: Any, getter: Getter, dc: DataCenter, names: list[str], stop: list[bool]) -> Any:
    """
    Every cache host asked for every stream's playlist: all at once, then
    each again every VIEWER_INTERVAL s, spread over it.
    """
    pairs = [(port, name) for name in names for port in dc.caches]
    yield DeferredList([getter.get("http://127.0.0.1:%d/live/%s/%s/playlist.m3u8" % (port, name, RENDITION))
                        for port, name in pairs])
    while not stop:
        for port, name in pairs:
            if stop:
                return
            getter.get("http://127.0.0.1:%d/live/%s/%s/playlist.m3u8" % (port, name, RENDITION))
            yield sleep(VIEWER_INTERVAL / len(pairs))


@inlineCallbacks
def measure_processes(reactor: Any, directory: str, etcd_url: str, source: str, push: bool, streams: int,
                      pops: int, seconds: float) -> Any:
    dc = DataCenter(os.path.join(directory, "push" if push else "ttl"), etcd_url, streams, pops, push)
    os.makedirs(dc.directory)
    getter = Getter(reactor)
    stop: list[bool] = []
    try:
        yield deferToThread(dc.start)
        names = ["live%02d" % (i,) for i in range(streams)]
        dc.publish(source, names)
        encoder = dc.url(dc.encoder)
        deadline = time.monotonic() + 60
        for name in names:
            while True:
                code, _, body, _ = yield getter.get("%s/live/%s/%s/playlist.m3u8" % (encoder, name, RENDITION))
                if code == 200 and newest_part(body):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("%s never played at the encoder; see %s" % (name, dc.directory))
                yield sleep(0.2)
        viewers(reactor, getter, dc, names, stop)
        if push:
            # Every cache host subscribed to every stream, the origin to every stream at the encoder.
            deadline = time.monotonic() + 30
            while True:
                text = yield metrics_of(getter, dc.url(dc.origin))
                if metric(text, "fbstream_push_subscriptions", "origin") >= streams * pops or \
                        time.monotonic() > deadline:
                    break
                yield sleep(0.5)
        yield sleep(3.0)  # past the first versions
        pids = {node.name: node.process.pid for node in dc.nodes() if node.process is not None}
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        origin0 = yield metrics_of(getter, dc.url(dc.origin))
        encoder0 = yield metrics_of(getter, encoder)
        pops0 = yield DeferredList([metrics_of(getter, dc.url(node)) for node in dc.pops])
        requests0 = getter.requests
        load0 = os.getloadavg()[0]
        began = time.monotonic()
        cuts = {name: Cuts(reactor, getter, encoder, name) for name in names}
        window = max(1.5, seconds / streams)
        figures = [Figures() for _ in range(pops)]
        watches: list[Deferred[Any]] = []

        @inlineCallbacks
        def host(i: int) -> Any:
            # Each host watches the streams in turn, each host starting at another.
            order = names[i * streams // pops:] + names[:i * streams // pops]
            for k in range(max(1, int(seconds / window))):
                name = order[k % streams]
                cache = "http://127.0.0.1:%d" % (dc.caches[i],)
                watches.append(Watch(reactor, getter, cuts[name], cache, name, figures[i]).run(window))
                yield sleep(window)

        yield DeferredList([host(i) for i in range(pops)])
        elapsed = time.monotonic() - began
        for node in dc.nodes():
            if node.process is None or node.process.poll() is not None:
                raise RuntimeError("%s exited while measured; see %s" % (
                    node.name, os.path.join(dc.directory, node.name + ".log")))
        for name, publisher in zip(names, dc.publishers):
            if publisher.poll() is not None:
                raise RuntimeError("the publisher of %s exited while measured; see %s" % (
                    name, os.path.join(dc.directory, name + ".ffmpeg.log")))
        cpu = {name: (cpu_seconds(pid) - cpu0[name]) / elapsed for name, pid in pids.items()}
        origin1 = yield metrics_of(getter, dc.url(dc.origin))
        encoder1 = yield metrics_of(getter, encoder)
        pops1 = yield DeferredList([metrics_of(getter, dc.url(node)) for node in dc.pops])
        requests = (getter.requests - requests0) / elapsed
        load = load0, os.getloadavg()[0]
        yield DeferredList(watches)
    finally:
        stop.append(True)
        yield getter.close()
        yield deferToThread(dc.stop)
    subscribed = metric(origin1, "fbstream_push_subscribers", "origin")
    return {
        "mode": "push" if push else "TTL",
        "figures": figures,
        "window": window,
        "origin_cpu": cpu["origin"],
        "subscribed": int(subscribed),
        "per_pop": cpu["origin"] / (subscribed if push else pops) if subscribed or not push else float("nan"),
        "encoder_cpu": cpu["encoder"],
        "pop_cpu": statistics.mean(cpu[node.name] for node in dc.pops),
        "sent": metric(origin1, "fbstream_push_sent_total", "origin") -
        metric(origin0, "fbstream_push_sent_total", "origin"),
        "dropped": [metric(after, "fbstream_push_dropped_total", tier) - metric(before, "fbstream_push_dropped_total", tier)
                    for before, after, tier in ((encoder0, encoder1, "encoder"), (origin0, origin1, "origin"))],
        "shed": metric(encoder1, "fbstream_encoder_shed_frames_total") -
        metric(encoder0, "fbstream_encoder_shed_frames_total"),
        "untimed": sum(c.untimed for c in cuts.values()),
        # Each hop's own push lag, from the encoder's stamp to that tier holding the object.
        "lag": {"origin": [lag_quantile(origin0, origin1, "origin", q) for q in (0.5, 0.99)],
                "PoPs": [statistics.mean(lag_quantile(b, a, "pop-cache", q) for (_, b), (_, a) in zip(pops0, pops1))
                         for q in (0.5, 0.99)]},
        "requests": requests,
        "load": load,
        "failures": getter.failures,
    }


def ms(values: list[float], q: float) -> float:
    return 1000 * percentile(values, q) if values else float("nan")


def report_processes(rows: list[dict[str, Any]], streams: int, pops: int, seconds: float) -> None:
    print("%d streams, each %s at %d fps, %d kbps H.264, no audio (the ffmpeg tool, -c copy), transcoded to one "
          "%s rendition (ladder %s), 1 s segments of 4 parts" % (
              streams, SOURCE["size"], SOURCE["rate"], SOURCE["kbps"], RENDITION, LADDER))
    print("one encoder, one origin (etcd for the registry), %d PoP cache hosts: each its own twistd process on "
          "loopback; %g s per mode, each host watching one stream at a time for %.1f s" % (
              pops, seconds, rows[0]["window"]))
    print("stale: encoder lists a part -> the host's playlist shows it or newer; part: encoder lists it -> "
          "the host's answer for it")
    print("%-5s %-5s %8s %10s %10s %7s %7s %9s %9s %13s" % (
        "mode", "host", "versions", "stale p50", "stale p99", "never", "late", "part p50", "part p99",
        "held at host"))
    for row in rows:
        figures: list[Figures] = row["figures"]
        total = Figures()
        for each in figures:
            total.add(each)
        for name, f in [*(("pop%d" % (i,), f) for i, f in enumerate(figures)), ("all", total)]:
            print("%-5s %-5s %8d %8.1f ms %8.1f ms %7d %7d %6.1f ms %6.1f ms %6d of %4d" % (
                row["mode"], name, f.versions, ms(f.stale, 0.5), ms(f.stale, 0.99), f.never, f.late,
                ms(f.parts, 0.5), ms(f.parts, 0.99), f.held, len(f.parts)))
    print("(never: versions the host never showed, going from an older one to a newer; late: not shown within "
          "%g s of the cut)" % (DRAIN,))
    print("%-5s %12s %14s %16s %12s %12s %12s %22s %12s" % (
        "mode", "origin CPU/s", "PoPs", "origin CPU/s/PoP", "encoder CPU", "host CPU", "pushes sent",
        "given up (enc, origin)", "frames shed"))
    for row in rows:
        print("%-5s %12.3f %14s %16.4f %12.3f %12.3f %12d %22s %12d" % (
            row["mode"], row["origin_cpu"],
            "%d subscribed" % (row["subscribed"],) if row["mode"] == "push" else "%d served" % (pops,),
            row["per_pop"], row["encoder_cpu"], row["pop_cpu"], row["sent"], "%d, %d" % tuple(row["dropped"]),
            row["shed"]))
    print("(CPU: CPU seconds per second of each process, from /proc/<pid>/stat; host CPU: the mean of the cache "
          "hosts'; pushes sent by the origin)")
    for row in rows:
        if row["mode"] == "push":
            print("push lag, each tier's own histogram (encoder's stamp -> the tier holds it): origin p50 %.1f ms, "
                  "p99 %.1f ms; PoP cache hosts p50 %.1f ms, p99 %.1f ms" % (
                      *(1000 * v for v in row["lag"]["origin"]), *(1000 * v for v in row["lag"]["PoPs"])))
    for row in rows:
        failed = sum(f.part_failures for f in row["figures"])
        print("%s: the bench asked %.0f requests/s (%d failed; %d parts not answered 200); %d encoder answers timed no "
              "cut; the machine's load average %.1f before, %.1f after (%d cores)" % (
                  row["mode"], row["requests"], row["failures"], failed, row["untimed"], *row["load"],
                  os.cpu_count()))


def run_processes(streams: int, pops: int, seconds: float, keep: bool) -> int:
    from twisted.internet import reactor

    rows: list[dict[str, Any]] = []

    @inlineCallbacks
    def both() -> Any:
        directory = tempfile.mkdtemp(prefix="fbstream-push-")
        etcd = Etcd(directory)
        try:
            yield deferToThread(etcd.start)
            source = yield deferToThread(make_source, directory, seconds + 120)
            for push in (True, False):
                row = yield measure_processes(reactor, directory, etcd.url, source, push, streams, pops, seconds)
                rows.append(row)
        finally:
            etcd.stop()
            if keep:
                print("every process's log is in %s" % (directory,))
            else:
                shutil.rmtree(directory, ignore_errors=True)

    failures: list[Failure] = []
    both().addErrback(failures.append).addBoth(lambda _: reactor.stop())
    reactor.run()
    if failures:
        failures[0].printTraceback()
        return 1
    report_processes(rows, streams, pops, seconds)
    return 0


def run_core(pushes: int) -> int:
    """Per-push CPU of the sans-IO core: the publisher's side, then the subscriber's."""
    from fbstream.push import core as wire

    settings = wire.ChannelSettings(max_pushes=pushes + 16)
    publisher, subscriber = wire.Publisher(settings), wire.Subscriber(settings)
    publisher.start()
    subscriber.start()

    def exchange() -> None:
        for _ in range(3):
            publisher.receive(subscriber.data_to_send())
            subscriber.receive(publisher.data_to_send())

    exchange()
    subscriber.subscribe("live00")
    exchange()
    body, made = b"\0" * 4700, time.time()  # a 144p part at 150 kbit/s
    objects = []
    for i in range(pushes):
        number, part = divmod(i // 2, 4)
        stamp = (wire.MADE_HEADER, b"%.3f" % (made + i / 8,))
        if i % 2 == 0:
            objects.append((b"/live/live00/144p/%d.%d.m4s" % (number, part), [
                (b"content-type", b"video/mp4"), (b"cache-control", b"public, max-age=31536000, immutable"),
                (b"access-control-allow-origin", b"*"), stamp], body))
        else:
            objects.append((b"/live/live00/144p/playlist.m3u8", [
                (b"content-type", b"application/vnd.apple.mpegurl"), (b"cache-control", b"public, max-age=1"),
                (b"access-control-allow-origin", b"*"), (b"x-fbstream-hls-edge", b"%d-%d 4.0" % (number, part)),
                stamp], b"#EXTM3U\n" + b"#EXT-X-PART:DURATION=0.25\n" * 40))
    sent, wire_bytes, published = [], 0, 0.0
    for path, headers, data in objects:
        began = time.process_time()
        push_id = publisher.push("live00", path, 200, headers)
        assert push_id is not None
        publisher.send(push_id, data, end=True)
        out = publisher.data_to_send()
        published += time.process_time() - began
        wire_bytes += len(out)
        sent.append(out)
        if len(sent) % 64 == 0:  # the subscriber's window updates, back to the publisher
            for pending in sent[-64:]:
                subscriber.receive(pending)
            publisher.receive(subscriber.data_to_send())
    # The subscriber's side, timed over every push again on a fresh pair.
    publisher2, subscriber2 = wire.Publisher(settings), wire.Subscriber(settings)
    publisher2.start()
    subscriber2.start()
    for _ in range(3):
        publisher2.receive(subscriber2.data_to_send())
        subscriber2.receive(publisher2.data_to_send())
    subscriber2.subscribe("live00")
    for _ in range(3):
        publisher2.receive(subscriber2.data_to_send())
        subscriber2.receive(publisher2.data_to_send())
    received, events = 0.0, 0
    for path, headers, data in objects:
        push_id = publisher2.push("live00", path, 200, headers)
        assert push_id is not None
        publisher2.send(push_id, data, end=True)
        out = publisher2.data_to_send()
        began = time.process_time()
        events += len(subscriber2.receive(out))
        received += time.process_time() - began
        publisher2.receive(subscriber2.data_to_send())
    print("the push channel's sans-IO core (h2 %s), %d pushes of a stream's parts and playlist versions:" % (
        __import__("h2").__version__, pushes))
    print("  publisher: %.1f us CPU per push; subscriber: %.1f us per push (%d events); %.0f bytes on the wire "
          "per push, headers and body" % (1e6 * published / pushes, 1e6 * received / pushes, events,
                                          wire_bytes / pushes))
    print("  so one core pushes about %.0f objects/s to subscribers, and takes in about %.0f/s" % (
        pushes / published, pushes / received))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=None, help="per mode (default 30; with --processes 60)")
    parser.add_argument("--smoke", action="store_true", help="a short run of each mode (CI)")
    parser.add_argument("--processes", action="store_true",
                        help="many streams, each role its own process, several PoP cache hosts")
    parser.add_argument("--streams", type=int, default=None, help="with --processes (default 20; smoke 4)")
    parser.add_argument("--pops", type=int, default=None, help="PoP cache hosts, with --processes (default 4; smoke 2)")
    parser.add_argument("--keep", action="store_true", help="with --processes: keep every process's log")
    parser.add_argument("--core", action="store_true", help="the sans-IO core alone: CPU per push at each end")
    args = parser.parse_args(argv)
    if args.core:
        return run_core(2000 if args.smoke else 20000)
    if args.processes:
        streams = args.streams or (4 if args.smoke else 20)
        pops = args.pops or (2 if args.smoke else 4)
        return run_processes(streams, pops, 8.0 if args.smoke else args.seconds or 60.0, args.keep)
    seconds = 6.0 if args.smoke else args.seconds or 30.0
    rows = [measure(True, seconds), measure(False, seconds)]
    print("%d s each, one stream (the demo), 720p LL-HLS playlist and parts at the PoP's viewers' port" % (seconds,))
    print("%-5s %9s %16s %16s %12s %14s %14s %14s %8s" % (
        "mode", "versions", "stale p50 (ms)", "stale p99 (ms)", "never seen", "part p50 (ms)", "part p99 (ms)",
        "held at PoP", "CPU/s"))
    for r in rows:
        print("%-5s %9d %16.1f %16.1f %12d %14.1f %14.1f %8d of %3d %8.2f" % (
            r["mode"], r["versions"], r["stale_p50_ms"], r["stale_p99_ms"], r["missed"], r["part_p50_ms"],
            r["part_p99_ms"], r["held"], r["parts"], r["cpu"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
