"""Requests for testing twisted.web resources without a connection."""

from __future__ import annotations

import io
import json
from typing import Any

from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from fbstream.live.login import COOKIE


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
        #: The push producer registered (None before), which the test pauses
        #: and resumes as a transport would.
        self.producer: Any = None
        self.streaming: bool | None = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
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


class APIRequest(Request):
    """
    A call to the JSON API (``/api/v1/...``): its method and body, the
    session cookie the browser holds (if any), and the header the page
    sends unless ``page`` is False; the cookie half of twisted.web's Request.
    """

    def __init__(self, method: bytes, path: bytes = b"", body: bytes = b"", cookie: bytes | None = None,
                 page: bool = True) -> None:
        super().__init__([path] if path else [])
        self.method = method
        self.content = io.BytesIO(body)
        self.cookies_set: list[tuple[bytes, bytes, dict[str, Any]]] = []
        self._cookie = cookie
        if page:
            self.requestHeaders.setRawHeaders(b"x-requested-with", [b"fbstream"])

    def getCookie(self, key: bytes) -> bytes | None:
        return self._cookie if key == COOKIE else None

    def addCookie(self, k: bytes, v: bytes, **kw: Any) -> None:  # type: ignore[override]
        self.cookies_set.append((k, v, kw))

    def isSecure(self) -> bool:
        return False


def rendered(resource: IResource, request: Request) -> bytes:
    """The body ``resource`` writes for ``request``: at once, or as far as its Deferreds have fired."""
    body = resource.render(request)
    if body is not NOT_DONE_YET:
        request.write(body)
    return request.body()


def answer(resource: IResource, request: APIRequest) -> tuple[int, Any]:
    """An API call's status and its JSON body."""
    body = rendered(resource, request)
    return request.responseCode or 200, json.loads(body)
