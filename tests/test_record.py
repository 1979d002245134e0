"""The FLV recorder and the ordered, bounded file writer under it."""

import os

from twisted.internet.testing import MemoryReactorClock
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from fbstream.diskio import BacklogExceeded, SerialFileWriter
from fbstream.live.hub import LiveStream
from fbstream.live.record import FLVRecorderFactory
from fbstream.media import IPublisher, MediaMessage
from fbstream.reactors import IReactorClients, IReactorTimeFromThreads
from fbstream.rtmp import flv


@implementer(IReactorTimeFromThreads, IReactorClients)
class InlineReactor(MemoryReactorClock):
    """A memory reactor whose calls from other threads run at once."""

    def callFromThread(self, callable, *args, **kwargs):
        callable(*args, **kwargs)


class StepPool(ThreadPool):
    """A thread pool, never started, whose jobs run only when the test says so."""

    def __init__(self):
        super().__init__()
        self.jobs = []

    def callInThreadWithCallback(self, onResult, func, *args, **kw):
        self.jobs.append((onResult, func, args, kw))

    def callInThread(self, func, *args, **kw):
        func(*args, **kw)

    def run_all(self):
        while self.jobs:
            on_result, f, args, kw = self.jobs.pop(0)
            try:
                result = f(*args, **kw)
            except BaseException as e:  # as twisted's pool reports it
                from twisted.python.failure import Failure

                on_result(False, Failure(e))
            else:
                on_result(True, result)


@implementer(IPublisher)
class Publisher:
    description = "test"

    def stop(self, reason):
        pass


class WriterTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = InlineReactor()
        self.pool = StepPool()

    def test_writes_in_order_and_renames_into_place(self):
        path = self.mktemp()
        writer = SerialFileWriter(path, self.pool, self.reactor, 1000)
        writer.write(b"a")
        writer.write(b"b")  # waits for the first write to finish
        writer.write(b"c")
        self.assertEqual(len(self.pool.jobs), 1)
        self.pool.run_all()
        d = writer.close()
        self.pool.run_all()
        self.assertEqual(self.successResultOf(d), path)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"abc")
        self.assertFalse(os.path.exists(path + ".part"))

    def test_backlog_is_bounded(self):
        path = self.mktemp()
        writer = SerialFileWriter(path, self.pool, self.reactor, 100)
        writer.write(b"x" * 60)  # in flight
        writer.write(b"x" * 60)  # waiting
        writer.write(b"x" * 60)  # over the bound: the recording is abandoned
        self.failureResultOf(writer.done, BacklogExceeded)
        writer.write(b"more")  # ignored, harmless
        self.pool.run_all()

    def test_disk_error_fails_the_writer(self):
        blocker = self.mktemp()
        with open(blocker, "w") as f:
            f.write("a file where a directory should be")
        writer = SerialFileWriter(os.path.join(blocker, "x.flv"), self.pool, self.reactor, 100)
        writer.write(b"x")
        self.pool.run_all()
        self.failureResultOf(writer.done, OSError)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)


class RecorderTests(SynchronousTestCase):
    def test_records_flv(self):
        reactor = InlineReactor()
        pool = StepPool()
        directory = self.mktemp()
        factory = FLVRecorderFactory(directory, pool, reactor, "test")
        stream = LiveStream("cam/../x", Publisher(), [], "test")
        recorder = factory.consumer_for(stream)
        recorder.media(MediaMessage(9, 0x1000000, b"\x17\x01\x00\x00\x00abc"))
        recorder.ended("done")
        pool.run_all()
        path = self.successResultOf(recorder.writer.done)
        self.assertTrue(os.path.basename(path).startswith("cam_.._x-"))
        self.assertEqual(os.path.dirname(path), directory)
        with open(path, "rb") as f:
            data = f.read()
        self.assertEqual(data, flv.file_header() + flv.file_tag(9, 0x1000000, b"\x17\x01\x00\x00\x00abc"))
