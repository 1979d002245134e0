"""
What every layer may import: a live stream's media messages and the
interfaces of what publishes, plays and consumes them. It imports nothing
of fbstream, nor Twisted's reactor, logger or Prometheus: the transcoder's
threads use it too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from fbstream.live.hub import LiveStream


class MediaMessage(NamedTuple):
    """One audio (8), video (9) or AMF0 data (18) message of a live stream."""

    type_id: int
    timestamp: int
    payload: bytes


class IStreamConsumer(Interface):
    """Something that takes a live stream's media: an encoder, a recorder, a relay."""

    def media(message: MediaMessage) -> None:
        """A message arrived, in the publisher's order."""

    def ended(reason: str) -> None:
        """The publisher is gone; no more messages will come."""


class IConsumerFactory(Interface):
    """Makes the consumer of each stream that starts."""

    def consumer_for(stream: LiveStream) -> IStreamConsumer | None:
        """Return a consumer for ``stream``, or ``None`` to take no part."""


class IPlayer(Interface):
    """A viewer attached directly to a live stream (an RTMP player)."""

    description = Attribute("Who this is, for logs.")

    def send(message: MediaMessage) -> None:
        """Deliver one message; must not block, and must bound what it keeps."""

    def stream_ended() -> None:
        """The publisher left."""


class IPublisher(Interface):
    description = Attribute("Who this is, for logs.")

    def stop(reason: str) -> None:
        """Disconnect this publisher."""
