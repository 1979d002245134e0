"""
A stream consumer that records each publish to an FLV file, off the reactor.

It proves the consumer interface end to end (the encoder is the other
implementation) and gives operators a raw copy of what was received.
"""

from __future__ import annotations

import os
import re
import time
from collections import deque
from typing import Any

from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from fbstream.diskio import SerialFileWriter
from fbstream.live.hub import LiveStream
from fbstream.media import IConsumerFactory, IStreamConsumer, MediaMessage
from fbstream.metrics import RECORDER_BYTES, RECORDER_FAILURES
from fbstream.reactors import IReactorTimeFromThreads
from fbstream.rtmp import flv

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@implementer(IStreamConsumer)
class FLVRecorder:
    """Writes one stream's messages to ``path`` as FLV."""

    log = Logger()

    def __init__(self, writer: SerialFileWriter, role: str) -> None:
        self.writer = writer
        self._role = role
        self._bytes = RECORDER_BYTES.labels(role=role)
        writer.write(flv.file_header())
        writer.done.addErrback(self._failed)

    def media(self, message: MediaMessage) -> None:
        tag = flv.file_tag(message.type_id, message.timestamp, message.payload)
        self._bytes.inc(len(tag))
        self.writer.write(tag)

    def ended(self, reason: str) -> None:
        self.writer.close()

    def _failed(self, failure: Any) -> None:
        RECORDER_FAILURES.labels(role=self._role).inc()
        self.log.error("recording {path} abandoned: {why}", path=self.writer.path, why=failure.value)


@implementer(IConsumerFactory)
class FLVRecorderFactory:
    """Records every stream that starts into ``directory``."""

    def __init__(
        self,
        directory: str,
        pool: ThreadPool,
        reactor: IReactorTimeFromThreads,
        role: str,
        max_backlog: int = 64 * 1024 * 1024,
    ) -> None:
        self.directory = directory
        self._pool = pool
        self._reactor = reactor
        self._role = role
        self._max_backlog = max_backlog
        #: The most recent recorders, newest last (for tests and diagnostics).
        self.recorders: deque[FLVRecorder] = deque(maxlen=32)
        self._made = 0

    def consumer_for(self, stream: LiveStream) -> FLVRecorder:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._reactor.seconds()))
        self._made += 1
        name = "%s-%s-%d.flv" % (_UNSAFE.sub("_", stream.name), stamp, self._made)
        writer = SerialFileWriter(
            os.path.join(self.directory, name), self._pool, self._reactor, self._max_backlog
        )
        recorder = FLVRecorder(writer, self._role)
        self.recorders.append(recorder)
        return recorder
