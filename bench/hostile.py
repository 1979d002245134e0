"""
Hostile input against a real ``twistd fbstream --role=all --demo``, one
attack at a time, each for a bounded time, with a canary viewer watching the
demo throughout. For each attack it prints:

- the server's resident memory (RSS, MiB) before, at the end of the attack,
  and a few seconds after it;
- the event loop's lag: the round trip of ``GET /time`` at the PoP every
  100 ms, p50 and p99 (ms) during the attack;
- the canary's failed requests (the 240p HLS playlist and each new segment
  of it, from another address than the attacker's) and its late segments
  (the playlist not moving on for more than 2.5 s, or a segment taking more
  than 1 s to arrive);
- the server's CPU during the attack (the attacker shares the 2 cores: a
  high lag with a low server CPU is the machine, not the server).

Each attack runs in a process of its own, as an attacker's would: in the
bench's process its threads would take the interpreter from the threads
that measure, and their own waits would read as the server's lag.

The first row, ``(none)``, is no attack: how much the server's RSS grows and
how the loop lags on its own.

Targets: RSS back within 10 % after each attack, lag p99 <= 100 ms, and no
canary failure from any attack without credentials. The attacks (the
issue's list; none needs credentials but ``api-create``):

- ``slowloris``: 2,000 HTTP connections from 127.0.0.2, each sending its
  request head a byte a second;
- ``rtmp-memory``: 40 RTMP connections each announcing a 16 MiB chunk size
  before ``connect`` and sending half of a huge chunk;
- ``ping-flood``: 20 RTMP connections sending pings as fast as they can;
- ``huge-name``: publishes with a 5 MB stream name, over and over;
- ``far-future``: 20,000 requests for distinct segment numbers far past the
  live edge, 32 at a time;
- ``rtmp-hog``: 999 RTMP connections held open from 127.0.0.3;
- ``api-body``: 50 unauthenticated POSTs announcing 1 GB bodies;
- ``api-create``: creating live videos as fast as one API key can.

    python bench/hostile.py [--seconds 20] [--only NAME ...]
    python bench/hostile.py --smoke    (CI: every attack for 3 s)

The exit status is non-zero only if the bench itself broke (the server did
not come up or died), never on a figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import re
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from fbstream.rtmp import messages as m  # noqa: E402
from fbstream.rtmp.chunk import MAX_CHUNK_SIZE, ChunkEncoder  # noqa: E402
from fbstream.rtmp.connection import ClientConnection  # noqa: E402
from tests.integration.test_twistd import all_role_process  # noqa: E402

API_KEY = "hostile-bench-key"


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its threads (not the demo publisher, a separate process)."""
    with open("/proc/%d/status" % (pid,)) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User and system CPU the process has used (all its threads, the transcoder's included)."""
    with open("/proc/%d/stat" % (pid,)) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_pid(log: Path) -> int:
    """The twistd whose log file is ``log``."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/cmdline" % (entry,), "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if b"twistd" in cmdline and ("--logfile=%s" % (log,)).encode() in cmdline:
                return int(entry)
    raise RuntimeError("twistd is not running")


def get(url: str, timeout: float = 5.0, data: bytes | None = None, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


class Watch:
    """Measures while an attack runs: the event loop's lag and the canary viewer."""

    def __init__(self, pop: int) -> None:
        self.pop = pop
        self.lags: list[float] = []
        self.failed: list[str] = []
        self.late = 0
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._lag, daemon=True),
                        threading.Thread(target=self._canary, daemon=True)]

    def __enter__(self) -> Watch:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(10)

    def _lag(self) -> None:
        url = "http://127.0.0.1:%d/time" % (self.pop,)
        while not self.stopping.is_set():
            began = time.monotonic()
            code = get(url, timeout=5)
            if code == 200:
                self.lags.append((time.monotonic() - began) * 1000)
            self.stopping.wait(0.1)

    def _canary(self) -> None:
        base = "http://127.0.0.1:%d/live/demo/240p/" % (self.pop,)
        seen: set[int] = set()
        moved = time.monotonic()
        while not self.stopping.is_set():
            request = urllib.request.Request(base + "playlist.m3u8")
            try:
                with urllib.request.urlopen(request, timeout=5) as r:
                    text = r.read().decode()
            except (urllib.error.HTTPError, OSError) as e:
                self.failed.append("playlist: %s" % (e,))
                self.stopping.wait(0.5)
                continue
            numbers = [int(n) for n in re.findall(r"^(\d+)\.m4s$", text, re.M)]
            new = [n for n in numbers[-2:] if n not in seen]
            if new:
                moved = time.monotonic()
            elif time.monotonic() - moved > 2.5:
                self.late += 1
                moved = time.monotonic()
            for n in new:
                began = time.monotonic()
                code = get(base + "%d.m4s" % (n,))
                if code != 200:
                    self.failed.append("%d.m4s: %d" % (n, code))
                elif time.monotonic() - began > 1.0:
                    self.late += 1
                seen.add(n)
            self.stopping.wait(0.5)


class Stop(Protocol):
    """The attack's stop flag (a multiprocessing Event, shared with the bench)."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


# The attacks: each runs until ``stop`` is set. ---------------------------------


def _rtmp_handshaken(port: int, source: str = "127.0.0.1") -> socket.socket | None:
    """An RTMP connection past the handshake, not yet connected."""
    sock = socket.socket()
    try:
        sock.bind((source, 0))
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
        client = ClientConnection("live", "rtmp://127.0.0.1/live")
        sock.sendall(client.bytes_to_send())
        got = b""
        while len(got) < 1 + 1536 * 2:
            chunk = sock.recv(65536)
            if not chunk:
                sock.close()
                return None
            got += chunk
        client.receive(got[: 1 + 1536 * 2])
        # C2 only (the connect command after it is left out).
        sock.sendall(client.bytes_to_send()[:1536])
        return sock
    except OSError:
        sock.close()
        return None


def _open_many(count: int, source: str, port: int) -> list[socket.socket]:
    """``count`` connections to ``port`` from ``source`` (a loopback address of the attacker's), not waited on."""
    socks = []
    for _ in range(count):
        sock = socket.socket()
        try:
            sock.bind((source, 0))
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            socks.append(sock)
        except OSError:
            sock.close()
    return socks


def slowloris(port: dict[str, int], stop: Stop, scale: float) -> None:
    socks = _open_many(int(2000 * scale), "127.0.0.2", port["pop"])
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-a: " + b"a" * 10_000
    sent = 0
    while not stop.is_set():
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.send(head[sent:sent + 1])
        sent = min(sent + 1, len(head) - 1)
        stop.wait(1.0)
    for sock in socks:
        sock.close()


def rtmp_memory(port: dict[str, int], stop: Stop, scale: float) -> None:
    socks = []
    enc = ChunkEncoder()
    attack = enc.set_chunk_size(MAX_CHUNK_SIZE) + enc.encode(3, 0, m.COMMAND_AMF0, 0, b"\x02" * 12_000_000)
    for _ in range(int(40 * scale) or 1):
        sock = _rtmp_handshaken(port["rtmp"])
        if sock is None:
            continue
        with contextlib.suppress(OSError):
            sock.sendall(attack[: len(attack) // 2])
        socks.append(sock)
    stop.wait()
    for sock in socks:
        sock.close()


def ping_flood(port: dict[str, int], stop: Stop, scale: float) -> None:
    ping = ChunkEncoder().encode(2, 0, m.USER_CONTROL, 0, m.user_control(m.UC_PING_REQUEST, 1)) * 1000
    while not stop.is_set():
        socks = [s for s in (_rtmp_handshaken(port["rtmp"]) for _ in range(int(20 * scale) or 1)) if s]
        deadline = time.monotonic() + 2
        while socks and time.monotonic() < deadline and not stop.is_set():
            for sock in list(socks):
                try:
                    sock.sendall(ping)
                except OSError:
                    socks.remove(sock)
        for sock in socks:
            sock.close()


def huge_name(port: dict[str, int], stop: Stop, scale: float) -> None:
    name = "x" * 5_000_000
    while not stop.is_set():
        sock = socket.socket()
        try:
            sock.settimeout(5)
            sock.connect(("127.0.0.1", port["rtmp"]))
            client = ClientConnection("live", "rtmp://127.0.0.1/live")
            sock.sendall(client.bytes_to_send())
            got = b""
            while len(got) < 1 + 1536 * 2:
                got += sock.recv(65536)
            client.receive(got)
            client.create_stream()
            client.publish(1, name)
            sock.sendall(client.bytes_to_send())
            sock.recv(65536)
        except OSError:
            pass
        finally:
            sock.close()


def far_future(port: dict[str, int], stop: Stop, scale: float) -> None:
    counter = iter(range(10_000_000, 10_000_000 + int(20_000 * scale) + 1))
    lock = threading.Lock()

    def worker() -> None:
        while not stop.is_set():
            with lock:
                n = next(counter, None)
            if n is None:
                return
            get("http://127.0.0.1:%d/live/demo/720p/%d.m4s" % (port["pop"], n))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.wait()


def rtmp_hog(port: dict[str, int], stop: Stop, scale: float) -> None:
    socks = _open_many(int(999 * scale), "127.0.0.3", port["rtmp"])
    stop.wait()
    for sock in socks:
        sock.close()


def api_body(port: dict[str, int], stop: Stop, scale: float) -> None:
    while not stop.is_set():
        for _ in range(int(50 * scale) or 1):
            sock = socket.socket()
            try:
                sock.settimeout(5)
                sock.connect(("127.0.0.1", port["pop"]))
                sock.sendall(b"POST /api/v1/live_videos HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
                deadline = time.monotonic() + 1
                while time.monotonic() < deadline:
                    sock.sendall(b"\0" * 65536)
            except OSError:
                pass
            finally:
                sock.close()


def api_create(port: dict[str, int], stop: Stop, scale: float) -> None:
    url = "http://127.0.0.1:%d/api/v1/live_videos" % (port["pop"],)
    while not stop.is_set():
        get(url, data=b"{}", headers={"Authorization": "Bearer " + API_KEY})


def nothing(port: dict[str, int], stop: Stop, scale: float) -> None:
    stop.wait()


ATTACKS: dict[str, Callable[[dict[str, int], Stop, float], None]] = {
    "(none)": nothing,
    "slowloris": slowloris,
    "rtmp-memory": rtmp_memory,
    "ping-flood": ping_flood,
    "huge-name": huge_name,
    "far-future": far_future,
    "rtmp-hog": rtmp_hog,
    "api-body": api_body,
    "api-create": api_create,
}
CREDENTIALED = {"api-create"}


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after each attack before RSS 'after'")
    parser.add_argument("--warmup", type=float, default=130.0,
                        help="seconds of the demo before the first attack (its 120 s window fills meanwhile)")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.settle, args.warmup = 3.0, 2.0, 0.0
    scale = 0.1 if args.smoke else 1.0
    names = args.only or list(ATTACKS)
    # A fresh interpreter per attack (not a fork of this one, whose threads
    # measure), with the stop flag shared.
    processes = multiprocessing.get_context("spawn")
    env = dict(os.environ, FBSTREAM_API_KEY=API_KEY, PYTHONPATH=ROOT)
    results = []
    with tempfile.TemporaryDirectory(prefix="fbstream-hostile-") as tmp, \
            all_role_process(Path(tmp), env=env, stderr=os.path.join(tmp, "stderr")) as (ports, log):
        deadline = time.monotonic() + 60
        while get("http://127.0.0.1:%d/live/demo/240p/playlist.m3u8" % (ports["pop"],)) != 200:
            if time.monotonic() > deadline:
                print("the demo never went live:\n" + log.read_text()[-3000:], file=sys.stderr)
                return 1
            time.sleep(0.5)
        pid = server_pid(log)
        time.sleep(args.warmup)
        print("Each attack %.0f s against the all role with the demo live (after %.0f s of it); a canary plays "
              "240p HLS. CPU: the server's, %% of one core; the attacker runs on the same 2 cores."
              % (args.seconds, args.warmup))
        print("%-12s %8s %8s %8s %8s %8s %8s %6s %7s %5s" % (
            "attack", "RSS MiB", "during", "after", "after-", "lag p50", "lag p99", "CPU %", "failed", "late"))
        for name in names:
            before = rss_mib(pid)
            cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
            stop = processes.Event()
            with Watch(ports["pop"]) as watch:
                attacker = processes.Process(target=ATTACKS[name], args=(ports, stop, scale), daemon=True)
                attacker.start()
                stop.wait(args.seconds)
                during = rss_mib(pid)
                cpu = 100 * (cpu_seconds(pid) - cpu_before) / (time.monotonic() - wall_before)
                stop.set()
                attacker.join(30)
                if attacker.is_alive():
                    attacker.kill()
            time.sleep(args.settle)
            try:
                after = rss_mib(pid)
            except OSError:
                print("the server died during %s:\n%s" % (name, log.read_text()[-3000:]), file=sys.stderr)
                return 1
            row = {"attack": name, "rss_before": round(before, 1), "rss_during": round(during, 1),
                   "rss_after": round(after, 1), "lag_p50_ms": pct(watch.lags, 0.5),
                   "lag_p99_ms": pct(watch.lags, 0.99), "canary_failed": len(watch.failed),
                   "canary_late": watch.late, "server_cpu_percent": round(cpu), "failures": watch.failed[:5]}
            results.append(row)
            print("%-12s %8.1f %8.1f %8.1f %+7.1f%% %8s %8s %6d %7d %5d%s" % (
                name, before, during, after, 100 * (after - before) / before if before else 0,
                "%.1f" % row["lag_p50_ms"] if row["lag_p50_ms"] is not None else "-",
                "%.1f" % row["lag_p99_ms"] if row["lag_p99_ms"] is not None else "-",
                cpu, row["canary_failed"], row["canary_late"], "  (with an API key)" if name in CREDENTIALED else ""))
        print("targets: RSS back within 10 %, lag p99 <= 100 ms, no canary failure without credentials")
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
