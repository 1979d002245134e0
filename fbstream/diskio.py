"""
Disk work off the reactor: a thread pool run by a Service, and an ordered,
bounded file writer on top of it.
"""

from __future__ import annotations

import os
import threading
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from fbstream.reactors import IReactorTimeFromThreads


def _daemon_thread(*args: Any, **kwargs: Any) -> threading.Thread:
    return threading.Thread(*args, daemon=True, **kwargs)


class ThreadPoolService(Service):
    """
    A dedicated thread pool, started and stopped with the application (not the
    reactor's default pool, which name resolution shares).

    Stopping never blocks the reactor: the pool's workers are joined on a
    thread of their own, and shutdown waits at most ``stop_timeout`` for a
    busy one, then goes on without it (workers are daemon threads, so one
    stuck in a long call does not keep the process alive either).
    """

    log = Logger()
    stop_timeout = 10.0

    def __init__(self, name: str, min_threads: int = 1, max_threads: int = 4,
                 reactor: IReactorTimeFromThreads | None = None) -> None:
        self.pool = ThreadPool(min_threads, max_threads, name=name)
        self.pool.threadFactory = _daemon_thread  # type: ignore[assignment]
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._reactor is None:
            from twisted.internet import reactor as default

            self._reactor = cast(IReactorTimeFromThreads, default)
        reactor = self._reactor
        stopped: Deferred[None] = Deferred()

        def fire() -> None:
            if not stopped.called:  # not already given up on
                stopped.callback(None)

        def stop() -> None:
            self.pool.stop()  # joins the workers
            reactor.callFromThread(fire)

        threading.Thread(target=stop, name="%s-stop" % (self.pool.name,), daemon=True).start()

        def gave_up(failure: Failure) -> None:
            failure.trap(TimeoutError)
            self.log.warn("{pool}: a worker is still busy after {s} s; shutting down without it",
                          pool=self.pool.name, s=self.stop_timeout)

        return stopped.addTimeout(self.stop_timeout, reactor).addErrback(gave_up)


class BacklogExceeded(Exception):
    """The disk fell too far behind the writer."""


class SerialFileWriter:
    """
    Append bytes to a file from a thread pool: one write in flight at a time,
    in order, with at most ``max_backlog`` bytes waiting. The file is written
    as ``<path>.part`` and renamed to ``path`` when closed, so a reader never
    sees a half-written file under its final name.

    ``done`` fires with the path once closed, or with the failure that ended it.
    """

    log = Logger()

    def __init__(self, path: str, pool: ThreadPool, reactor: IReactorFromThreads, max_backlog: int) -> None:
        self.path = path
        self._part = path + ".part"
        self._pool = pool
        self._reactor = reactor
        self._max_backlog = max_backlog
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._busy = False
        self._closing = False
        self._file: Any = None
        self.failure: Failure | None = None
        self.written = 0
        self.done: Deferred[str] = Deferred()

    def write(self, data: bytes) -> None:
        if self.failure is not None or self._closing:
            return
        if self._pending_bytes + len(data) > self._max_backlog:
            self._fail(Failure(BacklogExceeded("%d bytes waiting for the disk" % (self._pending_bytes,))))
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        self._kick()

    def close(self) -> Deferred[str]:
        self._closing = True
        self._kick()
        return self.done

    def _kick(self) -> None:
        if self._busy or self.failure is not None:
            return
        if not self._pending and not self._closing:
            return
        batch = b"".join(self._pending)
        self._pending = []
        self._pending_bytes = 0
        finish = self._closing
        self._busy = True
        d = deferToThreadPool(self._reactor, self._pool, self._write, batch, finish)
        d.addCallbacks(self._written, self._fail, callbackArgs=(len(batch), finish))

    def _write(self, batch: bytes, finish: bool) -> None:
        # In a pool thread.
        if self._file is None:
            os.makedirs(os.path.dirname(self._part) or ".", exist_ok=True)
            self._file = open(self._part, "wb")
        if batch:
            self._file.write(batch)
        if finish:
            self._file.close()
            os.replace(self._part, self.path)

    def _written(self, _: None, size: int, finish: bool) -> None:
        self._busy = False
        self.written += size
        if finish:
            self.done.callback(self.path)
        else:
            self._kick()

    def _fail(self, failure: Failure) -> None:
        self._busy = False
        if self.failure is not None:
            return
        self.failure = failure
        self._pending = []
        if failure.check(BacklogExceeded):
            self.log.warn("abandoning {path}: {why}", path=self.path, why=failure.value)
        else:
            self.log.failure("writing {path} failed", failure, path=self.path)
        file, self._file = self._file, None
        if file is not None:
            self._pool.callInThread(file.close)
        self.done.errback(failure)
