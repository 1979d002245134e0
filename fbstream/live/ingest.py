"""
Where an RTMP publish goes once the connection asks to publish.

An :class:`IIngest` decides, possibly after network round trips (a token to
verify, ownership to claim, the next hop to connect to), whether a publish is
accepted. Until its Deferred fires the broadcaster has no answer; then it gets
``NetStream.Publish.Start`` and its media goes to the returned
:class:`ISink`, or the error status of :class:`PublishRefused`.

:class:`HubIngest` publishes into this process's
:class:`~fbstream.live.hub.StreamHub` (the encoder, a stand-alone PoP);
:mod:`fbstream.relay` forwards to the next hop.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from zope.interface import Attribute, Interface, implementer

from fbstream.live.hub import AlreadyPublishing, LiveStream, StreamHub
from fbstream.media import IPublisher, MediaMessage

#: Refused because another encoder owns the stream: a dc-proxy tries the next one.
OWNED_ELSEWHERE = "NetStream.Publish.OwnedElsewhere"


class PublishRefused(Exception):
    """A publish is refused with this onStatus ``code`` and ``description``."""

    def __init__(self, code: str, description: str, reason: str = "refused") -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        #: A short label for the metrics.
        self.reason = reason


class PlayRefused(Exception):
    """A play is refused with this onStatus ``code`` and ``description``."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


class ISink(Interface):
    name = Attribute("the stream name")

    def media(message: MediaMessage) -> None:
        """An audio or video message (may raise UnsupportedCodec)."""

    def set_metadata(message: MediaMessage, values: dict[str, object]) -> None:
        """``onMetaData``."""

    def close(reason: str) -> None:
        """The publisher stopped or went away."""


class IIngest(Interface):
    def open(name: str, query: str, publisher: IPublisher) -> Deferred[ISink]:
        """Accept a publish (fires with its sink) or refuse it (PublishRefused)."""


class IAdmission(Interface):
    def admit(name: str, query: str, publisher: IPublisher) -> Deferred[None]:
        """Fire if ``publisher`` may publish ``name`` now; PublishRefused if not."""


@implementer(ISink)
class HubSink:
    def __init__(self, hub: StreamHub, stream: LiveStream) -> None:
        self.hub = hub
        self.stream = stream
        self.name = stream.name

    def media(self, message: MediaMessage) -> None:
        self.stream.media(message)

    def set_metadata(self, message: MediaMessage, values: dict[str, object]) -> None:
        self.stream.set_metadata(message, values)

    def close(self, reason: str) -> None:
        self.hub.unpublish(self.stream, reason)


@implementer(IIngest)
class HubIngest:
    """Publish into a local hub, after an optional admission step."""

    def __init__(self, hub: StreamHub, admission: Any = None) -> None:
        self.hub = hub
        self.admission = admission

    def open(self, name: str, query: str, publisher: IPublisher) -> Deferred[ISink]:
        if self.admission is None:
            return maybeDeferred(self._publish, name, publisher)
        d: Deferred[None] = self.admission.admit(name, query, publisher)
        return d.addCallback(lambda _: self._publish(name, publisher))

    def _publish(self, name: str, publisher: IPublisher) -> HubSink:
        try:
            return HubSink(self.hub, self.hub.publish(name, publisher))
        except AlreadyPublishing:
            raise PublishRefused(
                "NetStream.Publish.BadName", "stream %s is already being published" % (name,), "busy"
            ) from None
