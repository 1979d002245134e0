"""The pieces of the PoP's worker processes that need no process: settings, sockets, gathered metrics."""

from __future__ import annotations

import socket
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.exposition import generate_latest

from fbstream import config as _config
from fbstream import metrics
from fbstream.config import ConfigError
from fbstream.roles.workers import listening_socket, tcp_listen


@pytest.mark.parametrize("value, count", [("auto", None), ("1", 1), (3, 3), ("4", 4)])
def test_workers_setting_is_auto_or_a_count(value, count):
    text = _config.load("pop", None, ["pop.workers=%s" % (value,)])["pop"]["pop.workers"]
    assert _config.worker_count(text) == (count or len(__import__("os").sched_getaffinity(0)))


def test_a_pop_uses_every_core_and_the_all_role_one_process():
    """A PoP host's viewers get every core; on ``all`` the cores are the encoder's."""
    assert _config.load("pop", None, [])["pop"]["pop.workers"] == "auto"
    assert _config.load("all", None, [])["pop"]["pop.workers"] == "1"
    assert _config.load("all", None, ["pop.pop.workers=2"])["pop"]["pop.workers"] == "2"


@pytest.mark.parametrize("value", ["0", "-1", "many", "true", "1.5"])
def test_workers_setting_refuses_anything_else(value):
    with pytest.raises(ConfigError, match=r"pop\.workers"):
        _config.load("pop", None, ["pop.workers=%s" % (value,)])


def test_tcp_listen_parses_what_the_workers_share():
    assert tcp_listen("tcp:8080") == ("", 8080, 50)
    assert tcp_listen("tcp:8080:interface=127.0.0.1:backlog=4096") == ("127.0.0.1", 8080, 4096)
    assert tcp_listen("tcp:port=81:interface=\\:\\:1") == ("::1", 81, 50)
    for bad in ("ssl:443:privateKey=k.pem", "tcp:http", "tcp:80:reuse=1", "unix:/tmp/s"):
        with pytest.raises(ConfigError):
            tcp_listen(bad)


def test_listening_socket_listens_and_names_a_port_in_use():
    sock = listening_socket("tcp:0:interface=127.0.0.1")
    try:
        port = sock.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError, match="in use"):
            listening_socket("tcp:%d:interface=127.0.0.1" % (taken.getsockname()[1],))
        taken.close()
    finally:
        sock.close()


def test_gathered_metrics_add_the_workers_figures_once_per_family(tmp_path, monkeypatch):
    # A worker's figures, as prometheus_client's multiprocess mode writes them.
    from prometheus_client import values

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda: 4242))
    worker = Counter("fbstream_cache_requests", "Requests received", ["tier"], registry=CollectorRegistry())
    worker.labels(tier="pop-proxy").inc(5)
    monkeypatch.setattr(values, "ValueClass", values.MutexValue)
    here = metrics.REGISTRY  # this process's own figures, the same family among them
    from fbstream.cache import metrics as cache_metrics

    before = cache_metrics.REQUESTS.labels(tier="pop-proxy")._value.get()
    metrics.add_worker_metrics(str(tmp_path))
    try:
        text = generate_latest(metrics.GATHERED).decode()
    finally:
        metrics.remove_worker_metrics(str(tmp_path))
    assert here is metrics.REGISTRY
    assert text.count("# TYPE fbstream_cache_requests_total counter") == 1, text
    lines = [line for line in text.splitlines() if line.startswith('fbstream_cache_requests_total{tier="pop-proxy"}')]
    assert lines == ['fbstream_cache_requests_total{tier="pop-proxy"} %s' % (before + 5,)], lines


def test_each_worker_has_its_own_socket_on_the_port_and_the_kernel_spreads_connections():
    from twisted.internet.task import Clock

    from fbstream.roles.workers import WorkerPool

    cfg = _config.load("pop", None, ["pop.workers=3"])["pop"]
    pool = WorkerPool(cast(Any, Clock()), cfg, 3, ["tcp:0:interface=127.0.0.1"], 1)
    try:
        ports = {number: [s.getsockname() for s in socks] for number, socks in pool.sockets.items()}
        assert sorted(ports) == [1, 2, 3] and len({tuple(p) for p in ports.values()}) == 1
        port = pool.ports[0]
        # SO_REUSEPORT hashes connections over the three sockets: 60 from
        # distinct source ports land on every one of them.
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(60)]
        taken: dict[int, int] = {}
        for number, (sock,) in pool.sockets.items():
            sock.setblocking(False)
            while True:
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    break
                conn.close()
                taken[number] = taken.get(number, 0) + 1
        assert sorted(taken) == [1, 2, 3] and sum(taken.values()) == 60, taken
        for client in clients:
            client.close()
        # Another PoP on the same port is refused, as without workers.
        with pytest.raises(ConfigError, match="in use"):
            WorkerPool(cast(Any, Clock()), cfg, 2, ["tcp:%d:interface=127.0.0.1" % (port,)], 1)
        # A worker gone: its socket is closed and opened again for the next.
        pool._close(2)
        assert 2 not in pool.sockets
        pool.sockets[2] = pool._open()
        assert pool.sockets[2][0].getsockname()[1] == port
    finally:
        for number in list(pool.sockets):
            pool._close(number)


def test_a_worker_started_again_soon_takes_its_predecessors_queue_and_one_dying_again_and_again_does_not():
    from types import SimpleNamespace

    from twisted.internet.task import Clock
    from twisted.python.failure import Failure

    from fbstream.roles.workers import KEEP_QUEUE, WorkerPool

    clock = Clock()
    clock.advance(100)
    cfg = _config.load("pop", None, ["pop.workers=2"])["pop"]
    pool = WorkerPool(cast(Any, clock), cfg, 2, ["tcp:0:interface=127.0.0.1"], 1)
    pool.running = 1  # as started, without spawning processes
    try:
        port = pool.ports[0]
        kept = pool.sockets[1][0]
        # A viewer's connection waits in worker 1's queue when it dies...
        waiting = socket.create_connection(("127.0.0.1", port), timeout=5)
        dead = SimpleNamespace(number=1, pid=None, started=0.0)
        pool.workers[1] = cast(Any, dead)
        pool.ended(cast(Any, dead), Failure(Exception("killed")))
        # ...and its replacement will find it there: the socket is kept.
        assert pool.sockets[1][0] is kept
        waiting.close()
        # Dying young again and again: the pause grows past KEEP_QUEUE, and
        # the socket is closed so that the kernel sends connections elsewhere.
        while pool._pause <= KEEP_QUEUE:
            young = SimpleNamespace(number=1, pid=None, started=clock.seconds())
            pool.workers[1] = cast(Any, young)
            pool.ended(cast(Any, young), Failure(Exception("crashed")))
        assert 1 not in pool.sockets and 2 in pool.sockets
    finally:
        pool.running = 0
        for call in pool._restarts.values():
            call.cancel()
        for number in list(pool.sockets):
            pool._close(number)
