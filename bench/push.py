"""
The push channel against TTL pulls (issue 12), on ``twistd fbstream
--role=all --demo`` run twice on this machine: once with the encoder pushing
to the origin and the origin to the PoP's cache layer over HTTP/2, once with
the push channel off (every tier pulls, manifests and playlists kept for
their ``max-age`` of 1 s).

While the demo plays, one poller asks the encoder and the PoP (its viewers'
port, through both PoP layers) for the 720p LL-HLS media playlist every few
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

    python bench/push.py                  (2 x 30 s)
    python bench/push.py --seconds 60
    python bench/push.py --smoke          (CI: 2 x 6 s)

Not yet measured here: 20 streams across 4 PoP cache hosts, the origin's
CPU per subscribed PoP on its own, and the players' latency with and
without push (``bench/playback.py`` runs with push on).
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.integration.test_twistd import all_role_process  # noqa: E402

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--smoke", action="store_true", help="a short run of each mode (CI)")
    args = parser.parse_args(argv)
    seconds = 6.0 if args.smoke else args.seconds
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
