"""
The PoP's viewers served by two worker processes sharing its listening
socket (``pop.workers = 2``), on the ``all`` role's demo: both workers
serve, the cache layer behind them still fetches each object once, and
killing one worker costs nothing to the viewers of the other, while its own
viewers reconnect at once and a new worker takes its place.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter

from fbstream.load import mpd

from .test_push import ok_within
from .test_twistd import all_role_process

VIEWERS = 16


class KeptAlive(threading.Thread):
    """
    A viewer on one kept-alive connection: the manifest four times a second
    and each new segment of the lowest rendition as it completes. On an
    error it notes it and opens a new connection.
    """

    def __init__(self, port: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = stop
        self.local_ports: list[int] = []
        self.errors: list[tuple[float, int, str]] = []  # (when, local port, what)
        self.answered: list[tuple[float, int]] = []  # (when, local port)
        self.fetched: set[int] = set()

    def _connect(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.connect()
        self.local_ports.append(conn.sock.getsockname()[1])
        return conn

    def _get(self, conn: http.client.HTTPConnection, path: str) -> bytes:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise OSError("%s answered %d" % (path, response.status))
        self.answered.append((time.monotonic(), self.local_ports[-1]))
        return body

    def run(self) -> None:
        conn = self._connect()
        while not self.stop.is_set():
            try:
                manifest = mpd.parse(self._get(conn, "/live/demo/manifest.mpd"))
                track = manifest.tracks[0]
                low = min(track.renditions, key=lambda r: r.bandwidth)
                newest = manifest.newest_complete(track, time.time())
                if not self.fetched:
                    self._get(conn, "/live/demo/" + low.init(track))
                if newest not in self.fetched:
                    self._get(conn, "/live/demo/" + low.media(track, newest))
                    self.fetched.add(newest)
            except (OSError, http.client.HTTPException) as e:
                self.errors.append((time.monotonic(), self.local_ports[-1], repr(e)))
                conn.close()
                try:
                    conn = self._connect()
                except OSError as again:
                    self.errors.append((time.monotonic(), 0, repr(again)))
            self.stop.wait(0.25)
        conn.close()


def server_pids(port: int) -> dict[int, int]:
    """The pid of the process holding the server end of each connection to ``port``, by client port."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", "( sport = :%d )" % (port,)],
                         capture_output=True, text=True, check=True).stdout
    pids = {}
    for line in out.splitlines():
        peer = re.search(r"127\.0\.0\.1:%d\s+127\.0\.0\.1:(\d+)" % (port,), line)
        pid = re.search(r"pid=(\d+)", line)
        if peer and pid:
            pids[int(peer.group(1))] = int(pid.group(1))
    return pids


def worker_pids(log: str) -> dict[int, int]:
    """The newest pid of each worker, from the PoP's log."""
    return {int(n): int(pid) for n, pid in re.findall(r"pop worker (\d+) started \(pid (\d+)\)", log)}


def test_two_workers_share_the_socket_coalesce_and_outlive_one_another(tmp_path):
    with all_role_process(tmp_path, extra=("--demo", "--set", "pop.pop.workers=2")) as (ports, log):
        pop = ports["pop"]
        assert ok_within("http://127.0.0.1:%d/live/demo/manifest.mpd" % (pop,), 40) == 200, log.read_text()[-3000:]
        workers = worker_pids(log.read_text())
        assert sorted(workers) == [1, 2], log.read_text()[-3000:]
        stop = threading.Event()
        viewers = [KeptAlive(pop, stop) for _ in range(VIEWERS)]
        for viewer in viewers:
            viewer.start()
        try:
            time.sleep(4)
            serving = server_pids(pop)
            on = {viewer: serving.get(viewer.local_ports[-1]) for viewer in viewers}
            # Both workers took connections, and nothing else did (not the PoP itself).
            assert set(on.values()) == set(workers.values()), (on, workers)
            assert not any(viewer.errors for viewer in viewers), [v.errors for v in viewers]
            victim = workers[1]
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            time.sleep(6)
        finally:
            stop.set()
            for viewer in viewers:
                viewer.join(15)
        text = log.read_text()
        metrics = subprocess.run(["curl", "-s", "http://127.0.0.1:%d/metrics" % (pop,)],
                                 capture_output=True, text=True).stdout
    # The other worker's viewers lost nothing.
    for viewer, pid in on.items():
        if pid != victim:
            assert viewer.errors == [], viewer.errors
    # The killed worker's viewers each failed at most once, reconnected at
    # once (the other worker, or the new one, took them), and played on.
    for viewer, pid in on.items():
        if pid == victim:
            assert len(viewer.errors) <= 1, viewer.errors
            after = [when for when, _ in viewer.answered if when > killed_at + 1.0]
            assert after, "a viewer of the killed worker was not answered again"
    # A new worker 1 took the dead one's place.
    again = worker_pids(text)
    assert again[1] != victim and "pop worker 1 (pid %d) exited" % (victim,) in text, text[-3000:]
    assert re.search(r'fbstream_pop_worker_cpu_seconds_total\{worker="2"\} [1-9]', metrics) or \
        re.search(r'fbstream_pop_worker_cpu_seconds_total\{worker="2"\} 0\.[0-9]*[1-9]', metrics), metrics
    # Coalescing behind the workers: each object one fetch from the origin
    # by the cache layer, and one by the origin from the encoder; the proxy
    # layers at most one each per worker process (two, and the new one).
    fetched = Counter(re.findall(
        r'"GET (/live/demo/[^ ?]+\.(?:m4s|mp4)) HTTP/1.1" \d+ \d+ "-" "fbstream-cache \(([\w-]+)\)"',
        "".join(path.read_text() for path in tmp_path.glob("twistd.log*"))))
    by_tier: dict[str, Counter[str]] = {}
    for (path, tier), count in fetched.items():
        by_tier.setdefault(tier, Counter())[path] = count
    assert by_tier.get("pop-proxy"), fetched
    assert max(by_tier["pop-proxy"].values()) <= 3, by_tier["pop-proxy"].most_common(5)
    for tier in ("pop-cache", "origin"):
        assert set(by_tier.get(tier, Counter({"-": 1})).values()) == {1}, by_tier[tier].most_common(5)
