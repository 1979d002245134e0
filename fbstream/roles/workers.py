"""
The PoP's viewers' listeners served by worker processes (``pop.workers``):
one process per core, each with its own proxy layer.

This process (the PoP) opens the listening sockets and never accepts on
them: for each ``http.listen`` endpoint, a socket per worker, all bound to
the same address with ``SO_REUSEPORT``, so that the kernel spreads new
connections evenly over the workers (one shared socket lets whichever worker
wakes first take every connection waiting, and under load one worker took
them all). Each worker is started with its sockets as inherited file
descriptors and adopts them (``adoptStreamPort``). When a worker dies this
process keeps its sockets for the worker that replaces it a moment later,
which takes the connections waiting in them: a viewer reconnecting there
waits a second or two, and is not reset. A worker that keeps dying has its
sockets closed (the connections waiting are reset, and new ones go to the
others) and opened again when it is next started.
The workers' proxy layers fetch from the PoP's cache layer, which still
coalesces: one request per object reaches the origin, however many workers
ask. What a worker does not serve itself (the live API, ``/metrics``) it
forwards to this process on a loopback port only the workers know.

A worker that exits is started again (after a pause that grows while it
keeps dying young); a worker whose PoP is gone sees its standard input close
and stops. The workers' metrics reach this process's ``/metrics`` through
prometheus_client's multiprocess files (:func:`fbstream.metrics.add_worker_metrics`),
and their log lines its log, each marked with the worker's number.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
from typing import Any

from prometheus_client.multiprocess import mark_process_dead
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from fbstream.config import ConfigError, RoleConfig
from fbstream.metrics import add_worker_metrics, remove_worker_metrics
from fbstream.reactors import IReactorRoles

#: Seconds before a worker that exited is started again, and the most that
#: pause grows to while workers keep dying within :data:`YOUNG` seconds.
RESTART_PAUSE, MAX_RESTART_PAUSE, YOUNG = 0.5, 30.0, 10.0
#: A worker started again within this many seconds takes over its
#: predecessor's sockets with the connections waiting in them; one that keeps
#: dying has them closed, so that the kernel sends new connections elsewhere.
KEEP_QUEUE = 2.0
#: Seconds a worker has to stop after SIGTERM before it is killed.
STOP_GRACE = 5.0
#: Bytes of one log line a worker may send (longer ones are cut).
MAX_LINE = 16 * 1024

_SEPARATOR = re.compile(r"(?<!\\):")


def tcp_listen(description: str) -> tuple[str, int, int]:
    """
    The interface, port and backlog of a ``tcp:`` endpoint string
    (``tcp:PORT[:interface=ADDRESS][:backlog=N]``), the only kind the workers share.
    """
    parts = [part.replace("\\:", ":") for part in _SEPARATOR.split(description)]
    if parts[0] != "tcp":
        raise ConfigError("http.listen %s: with pop.workers above 1 the viewers' listeners must be tcp: "
                          "(terminate TLS in front of the PoP)" % (description,))
    port, options = None, {}
    for part in parts[1:]:
        name, sep, value = part.partition("=")
        if sep:
            options[name] = value
        elif port is None:
            port = name
    try:
        number = int(options.pop("port", port) or "")
        backlog = int(options.pop("backlog", "50"))
    except ValueError:
        raise ConfigError("http.listen %s: not a tcp:PORT endpoint" % (description,)) from None
    interface = options.pop("interface", "")
    if options:
        raise ConfigError("http.listen %s: with pop.workers above 1, tcp: takes only port, interface and backlog"
                          % (description,))
    return interface, number, backlog


def listening_socket(description: str, reuse_port: bool = False, port: int | None = None) -> socket.socket:
    """
    A bound, listening, non-blocking socket for a ``tcp:`` endpoint string
    (on ``port`` if given: the one a first socket of a ``SO_REUSEPORT`` group
    was given for port 0).
    """
    interface, configured, backlog = tcp_listen(description)
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, configured if port is None else port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise ConfigError("http.listen %s: %s" % (description, e.strerror)) from None
    return sock


class _Worker(ProcessProtocol):
    """One worker process: its log lines relayed, its end reported."""

    log = Logger()

    def __init__(self, pool: WorkerPool, number: int) -> None:
        self.pool = pool
        self.number = number
        self.pid: int | None = None
        self.started = pool.reactor.seconds()
        self.ended: Deferred[None] = Deferred()
        self._partial = {1: b"", 2: b""}

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]

    def childDataReceived(self, fd: int, data: bytes) -> None:
        lines = (self._partial.get(fd, b"") + data).split(b"\n")
        self._partial[fd] = lines.pop()[-MAX_LINE:]
        for line in lines:
            if line:
                self.log.info("worker {number}: {line}", number=self.number,
                              line=line[:MAX_LINE].decode("utf-8", "replace"))

    def processEnded(self, reason: Failure) -> None:
        self.pool.ended(self, reason)
        self.ended.callback(None)


class WorkerPool(Service):
    """
    ``count`` worker processes serving the ``tcp:`` endpoints
    ``descriptions``, each on sockets of its own (see the module's
    docstring), told to forward what they do not serve to ``forward_port``
    on loopback. The sockets are opened here, so that a port in use fails
    the PoP's start.
    """

    log = Logger()

    def __init__(self, reactor: IReactorRoles, config: RoleConfig, count: int, descriptions: list[str],
                 forward_port: Any) -> None:
        self.reactor = reactor
        self.config = config
        self.count = count
        self.descriptions = descriptions
        # A port in use fails here, as without workers: a plain socket
        # first (another PoP's SO_REUSEPORT group would take ours in, and
        # share its viewers with it), then the group on the port it got.
        probes = [listening_socket(description) for description in descriptions]
        #: The ports bound (a port 0 endpoint's, as the probe got it).
        self.ports = [sock.getsockname()[1] for sock in probes]
        for sock in probes:
            sock.close()
        #: Each worker's sockets, one per endpoint.
        self.sockets: dict[int, list[socket.socket]] = {}
        for number in range(1, count + 1):
            self.sockets[number] = self._open()
        #: The loopback port (a number, or a callable giving it once the
        #: forwarding listener is up) workers forward to.
        self.forward_port = forward_port
        self.workers: dict[int, _Worker] = {}
        self.metrics_dir = ""
        self._pause = RESTART_PAUSE
        self._restarts: dict[int, Any] = {}

    def startService(self) -> None:
        super().startService()
        self.metrics_dir = tempfile.mkdtemp(prefix="fbstream-pop-workers-")
        add_worker_metrics(self.metrics_dir)
        for number in range(1, self.count + 1):
            self._spawn(number)

    def _open(self) -> list[socket.socket]:
        return [listening_socket(description, reuse_port=True, port=port)
                for description, port in zip(self.descriptions, self.ports)]

    def _close(self, number: int) -> None:
        for sock in self.sockets.pop(number, []):
            sock.close()

    def _spawn(self, number: int) -> None:
        self._restarts.pop(number, None)
        if not self.running:
            return
        if number not in self.sockets:
            try:
                self.sockets[number] = self._open()
            except ConfigError as e:
                self.log.error("pop worker {number} cannot listen: {why}; trying again", number=number, why=e)
                self._restarts[number] = self.reactor.callLater(MAX_RESTART_PAUSE, self._spawn, number)
                return
        sockets = self.sockets[number]
        port = self.forward_port() if callable(self.forward_port) else self.forward_port
        spec = {
            "number": number,
            "config": self.config.values,
            "sockets": [[3 + i, int(sock.family)] for i, sock in enumerate(sockets)],
            "forward_port": port,
        }
        env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=self.metrics_dir, FBSTREAM_WORKER=json.dumps(spec))
        fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        for i, sock in enumerate(sockets):
            fds[3 + i] = sock.fileno()
        worker = _Worker(self, number)
        self.workers[number] = worker
        self.reactor.spawnProcess(worker, sys.executable, [sys.executable, "-m", "fbstream.roles.worker"],
                                  env=env, childFDs=fds)
        self.log.info("pop worker {number} started (pid {pid})", number=number, pid=worker.pid)

    def ended(self, worker: _Worker, reason: Failure) -> None:
        if worker.pid is not None:
            mark_process_dead(worker.pid, self.metrics_dir)
        if self.workers.get(worker.number) is not worker:
            return
        del self.workers[worker.number]
        if not self.running:
            return
        lived = self.reactor.seconds() - worker.started
        self._pause = RESTART_PAUSE if lived > YOUNG else min(self._pause * 2, MAX_RESTART_PAUSE)
        if self._pause > KEEP_QUEUE:
            # Dying again and again: its connections waiting to be accepted
            # are reset, and new ones go to the other workers until it lives.
            self._close(worker.number)
        self.log.warn("pop worker {number} (pid {pid}) exited after {lived:.0f} s ({why}); starting it again "
                      "in {pause:.1f} s", number=worker.number, pid=worker.pid, lived=lived,
                      why=reason.getErrorMessage(), pause=self._pause)
        self._restarts[worker.number] = self.reactor.callLater(self._pause, self._spawn, worker.number)

    def pids(self) -> list[int]:
        return [worker.pid for worker in self.workers.values() if worker.pid is not None]

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        ending = [worker.ended for worker in self.workers.values()]
        for worker in self.workers.values():
            self._signal(worker, signal.SIGTERM)
        kill = self.reactor.callLater(STOP_GRACE, self._kill_all)

        def done(_: Any) -> None:
            if kill.active():
                kill.cancel()
            for number in list(self.sockets):
                self._close(number)
            remove_worker_metrics(self.metrics_dir)
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

        return DeferredList(ending).addCallback(done)

    def _kill_all(self) -> None:
        for worker in self.workers.values():
            self._signal(worker, signal.SIGKILL)

    def _signal(self, worker: _Worker, number: int) -> None:
        try:
            worker.transport.signalProcess(number)  # type: ignore[union-attr]
        except Exception:  # already gone (ProcessExitedAlready)
            pass
