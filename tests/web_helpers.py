"""A request for testing twisted.web resources without a connection."""

from __future__ import annotations

from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from twisted.web.test.requesthelper import DummyRequest


class Request(DummyRequest):
    """
    DummyRequest with the rest of twisted.web's Request that the playback
    resources use: a push producer's registration, a connection they can
    cut off (a body aborted is never finished) and one the viewer can
    leave, and the response as a viewer reads it.
    """

    def __init__(self, postpath: list[bytes]) -> None:
        super().__init__(postpath)
        self._disconnected = False
        #: Whether the resource cut the connection off.
        self.aborted = False
        self.channel = _Connection(self)
        #: The push producer registered, which the test pauses and resumes as a transport would.
        self.producer = None
        self.streaming = None

    def registerProducer(self, producer, streaming) -> None:
        # As twisted.web's Request: kept, not driven (DummyRequest's own
        # calls resumeProducing in a loop, as for a pull producer).
        assert self.producer is None, "a producer is registered already"
        self.producer, self.streaming = producer, streaming

    def unregisterProducer(self) -> None:
        self.producer = None

    def header(self, name: bytes) -> bytes | None:
        """The response header ``name``, as last set (DummyRequest keeps every value set)."""
        values = self.responseHeaders.getRawHeaders(name)
        return values[-1] if values else None

    def body(self) -> bytes:
        return b"".join(self.written)

    def leave(self) -> None:
        """The viewer's connection is gone."""
        self.processingFailed(Failure(ConnectionLost()))


class _Connection:
    """``request.channel`` and its transport: what a resource reaches for to cut a body off."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.transport = self

    def abortConnection(self) -> None:
        self.request.aborted = True
