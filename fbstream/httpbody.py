"""
A growing body streamed to HTTP requests at the pace each client reads it.

The encoder's segment being cut and a cache's object being fetched are the
same thing to a viewer: a list of chunks that grows until it is complete,
read by many requests at once, each of which may join late and may read
slowly. :class:`BodyProducer` is one such request's reader, a push producer
registered on it. It keeps only its position in the shared chunks (never a
copy of the body), writes at most ``max_write`` bytes at a time and stops
as soon as its transport pauses it, so what one viewer costs is its
transport's buffer (its own limit plus one write), whatever the body's size.
One paused for longer than ``stall_timeout`` is dropped.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.web.server import Request
from zope.interface import Attribute, Interface, implementer

#: The most one write hands a transport: a socket's transport pauses its
#: producer once it holds more than 64 KiB, so a viewer that stops reading
#: keeps at most about twice this, not a whole large object.
MAX_WRITE = 64 * 1024


class IGrowingBody(Interface):
    """A response body that may still grow, shared by every request reading it."""

    chunks = Attribute("list[bytes]: the body so far, in order; only ever appended to")
    complete = Attribute("bool: whether chunks hold the whole body; none follow once it is")


class Outcome(enum.Enum):
    """How a :class:`BodyProducer` ended."""

    #: The whole body was written and the request finished.
    COMPLETE = "complete"
    #: The client went away first.
    GONE = "gone"
    #: Paused by its transport for longer than the stall bound: dropped.
    STALLED = "stalled"
    #: Its owner cut it short (the body will never be complete).
    ABORTED = "aborted"


class _State(enum.Enum):
    NEW = "new"  # not started
    WRITING = "writing"  # writes what the body has as it grows
    PAUSED = "paused"  # its transport is full
    ENDED = "ended"


@implementer(IPushProducer)
class BodyProducer:
    """
    Streams ``body`` to ``request`` from its first byte, then each chunk as
    the owner says it has come (:meth:`more`), and finishes the request once
    the body is complete and all written.

    The owner sets the response's status and headers (``Content-Length`` if
    it knows the length) before :meth:`start`, calls :meth:`more` whenever
    the body grows or completes and :meth:`abort` if it never will, and is
    told once, through ``ended(producer, outcome)``, that the producer is
    done with the request for whatever reason, so it can forget it.

    :param sent: called with the size of every write, for a byte counter.
    :param skip: body bytes the client has been sent already (by its owner):
        the producer starts after them.
    :param clock: and ``stall_timeout``: a viewer paused that long is dropped
        (``None``: never).
    """

    def __init__(
        self,
        request: Request,
        body: IGrowingBody,
        ended: Callable[[BodyProducer, Outcome], None],
        *,
        sent: Callable[[int], object] | None = None,
        clock: IReactorTime | None = None,
        stall_timeout: float | None = None,
        max_write: int = MAX_WRITE,
        skip: int = 0,
    ) -> None:
        self.request = request
        self.body = body
        self.outcome: Outcome | None = None
        #: Body bytes written so far.
        self.written = skip
        #: Times its transport paused it.
        self.pauses = 0
        self._ended = ended
        self._sent = sent
        self._clock = clock
        self._stall_timeout = stall_timeout
        self._max_write = max_write
        self._state = _State.NEW
        #: The next byte to write: chunk index, and offset in that chunk.
        self._chunk = 0
        self._offset = 0
        for chunk in body.chunks:
            if skip < len(chunk):
                break
            skip -= len(chunk)
            self._chunk += 1
        self._offset = skip
        self._stall: IDelayedCall | None = None

    @property
    def paused(self) -> bool:
        return self._state is _State.PAUSED

    def start(self) -> None:
        """Register on the request and write what the body has."""
        if self._state is not _State.NEW:
            return
        self._state = _State.WRITING
        self.request.notifyFinish().addErrback(self._lost)
        self.request.registerProducer(self, True)
        self.more()

    def more(self) -> None:
        """The body grew or completed: write what is new, as far as the transport takes it."""
        chunks = self.body.chunks
        while self._state is _State.WRITING and self._chunk < len(chunks):
            data = chunks[self._chunk]
            start = self._offset
            if start == 0 and len(data) <= self._max_write:
                piece = data  # the shared chunk itself, not a copy
            else:
                piece = data[start:start + self._max_write]
            self._offset += len(piece)
            if self._offset >= len(data):
                self._chunk += 1
                self._offset = 0
            if not piece:
                continue
            self.written += len(piece)
            if self._sent is not None:
                self._sent(len(piece))
            self.request.write(piece)  # may pause us, or find the client gone
        if self._state is _State.WRITING and self.body.complete and self._chunk >= len(chunks):
            self._end(Outcome.COMPLETE)

    def abort(self) -> None:
        """The body will never be complete: cut the response short, so no one takes it for whole."""
        self._end(Outcome.ABORTED)

    # IPushProducer: the transport is full, drained, or going away.
    def pauseProducing(self) -> None:
        if self._state is not _State.WRITING:
            return
        self._state = _State.PAUSED
        self.pauses += 1
        if self._clock is not None and self._stall_timeout is not None:
            self._stall = self._clock.callLater(self._stall_timeout, self._stalled)

    def resumeProducing(self) -> None:
        if self._state is not _State.PAUSED:
            return
        self._state = _State.WRITING
        self._cancel_stall()
        self.more()

    def stopProducing(self) -> None:
        # The connection is going away (Twisted says so before notifyFinish).
        self._end(Outcome.GONE)

    def _lost(self, _: Any) -> None:
        self._end(Outcome.GONE)

    def _stalled(self) -> None:
        self._stall = None
        self._end(Outcome.STALLED)

    def _end(self, outcome: Outcome) -> None:
        if self._state is _State.ENDED:
            return
        if outcome is Outcome.COMPLETE and self.request._disconnected:
            outcome = Outcome.GONE  # lost before Twisted told us: nothing to finish
        self._state = _State.ENDED
        self.outcome = outcome
        self._cancel_stall()
        if outcome is not Outcome.GONE:
            self.request.unregisterProducer()
            if outcome is Outcome.COMPLETE:
                self.request.finish()
            else:
                # Never finish a body that is not whole: abort, so a chunked
                # body ends without its last chunk and a sized one short.
                transport: Any = self.request.channel.transport
                transport.abortConnection()
        self._ended(self, outcome)

    def _cancel_stall(self) -> None:
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        self._stall = None
