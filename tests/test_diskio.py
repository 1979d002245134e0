"""
Stopping a thread pool never blocks the reactor, and shutdown never waits
forever on a busy worker (a transcode that runs long).
"""

from __future__ import annotations

import threading

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from fbstream.diskio import ThreadPoolService


@pytest_twisted.inlineCallbacks
def test_stopping_does_not_wait_on_a_busy_worker():
    service = ThreadPoolService("fbstream-test-busy", 1, 1)
    service.stop_timeout = 0.5
    service.startService()
    release = threading.Event()
    service.pool.callInThread(release.wait, 60)
    yield deferLater(reactor, 0.1, lambda: None)  # the worker is in its call
    try:
        stopping = service.stopService()  # the old code joined the worker here, on the reactor
        assert not stopping.called
        yield stopping  # gives up on the worker after stop_timeout
        assert service.pool.threads[0].daemon  # it will not keep the process alive
    finally:
        release.set()


@pytest_twisted.inlineCallbacks
def test_stopping_an_idle_pool_joins_its_workers():
    service = ThreadPoolService("fbstream-test-idle", 1, 2)
    service.startService()
    done = threading.Event()
    service.pool.callInThread(done.set)
    yield deferLater(reactor, 0.1, lambda: None)
    assert done.is_set()
    yield service.stopService()
    assert not any(thread.is_alive() for thread in service.pool.threads)
