"""
The live streams of one process: who publishes each, who plays it, and the
consumers (an encoder, a recorder, a relay) it is handed to.

A :class:`LiveStream` keeps what a late joiner needs to start decoding at once:
the metadata, the codec sequence headers and the media since the last keyframe
(a GOP cache, bounded in bytes).
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.logger import Logger

from fbstream.config import default
from fbstream.media import IConsumerFactory, IPlayer, IPublisher, IStreamConsumer, MediaMessage
from fbstream.metrics import (
    RTMP_MEDIA_BYTES,
    RTMP_MEDIA_MESSAGES,
    RTMP_STREAMS_LIVE,
)
from fbstream.rtmp import flv
from fbstream.rtmp.errors import UnsupportedCodec
from fbstream.rtmp.messages import AUDIO, DATA_AMF0, VIDEO

#: The GOP cache is dropped (late joiners wait for the next keyframe) past this.
DEFAULT_MAX_GOP_BYTES: int = default("rtmp.gop_cache_bytes")

DEFAULT_VIDEO_CODECS = frozenset(default("rtmp.video_codecs"))
DEFAULT_AUDIO_CODECS = frozenset(default("rtmp.audio_codecs"))


class AlreadyPublishing(Exception):
    """The stream has a publisher already."""


class StreamNotFound(Exception):
    """No such live stream."""


class LiveStream:
    """One published stream and everything attached to it."""

    log = Logger()

    def __init__(
        self,
        name: str,
        publisher: IPublisher,
        consumers: Iterable[IStreamConsumer],
        role: str,
        max_gop_bytes: int = DEFAULT_MAX_GOP_BYTES,
        video_codecs: frozenset[str] = DEFAULT_VIDEO_CODECS,
        audio_codecs: frozenset[str] = DEFAULT_AUDIO_CODECS,
    ) -> None:
        self.name = name
        self.publisher = publisher
        self.consumers = list(consumers)
        self.players: list[IPlayer] = []
        self.metadata: MediaMessage | None = None
        self.metadata_values: dict[str, object] = {}
        self.video_header: MediaMessage | None = None
        self.audio_header: MediaMessage | None = None
        self.gop: list[MediaMessage] = []
        self._gop_bytes = 0
        self._max_gop_bytes = max_gop_bytes
        self._video_codecs = video_codecs
        self._audio_codecs = audio_codecs
        self.video_codec: str | None = None
        self.audio_codec: str | None = None
        self.ended = False
        self.counts = {AUDIO: 0, VIDEO: 0, DATA_AMF0: 0}
        self._messages = {
            t: RTMP_MEDIA_MESSAGES.labels(role=role, kind=k)
            for t, k in ((AUDIO, "audio"), (VIDEO, "video"), (DATA_AMF0, "data"))
        }
        self._bytes = RTMP_MEDIA_BYTES.labels(role=role)

    def set_metadata(self, message: MediaMessage, values: dict[str, object]) -> None:
        self.metadata = message
        self.metadata_values = values
        self._fan_out(message)

    def media(self, message: MediaMessage) -> None:
        """
        Take one audio or video message from the publisher.

        Raises :class:`UnsupportedCodec` for a codec this server refuses.
        """
        payload = message.payload
        if message.type_id == VIDEO:
            tag = flv.parse_video(payload)
            if tag.command:
                return
            self._check_codec("video", tag.codec, self._video_codecs)
            if tag.sequence_header:
                self.video_header = message
            elif tag.keyframe:
                self.gop = [message]
                self._gop_bytes = len(payload)
            elif self.gop:
                self._keep(message)
        else:
            atag = flv.parse_audio(payload)
            self._check_codec("audio", atag.codec, self._audio_codecs)
            if atag.sequence_header:
                self.audio_header = message
            elif self.gop or self.video_codec is None:
                self._keep(message)
        self.counts[message.type_id] += 1
        self._messages[message.type_id].inc()
        self._bytes.inc(len(payload))
        self._fan_out(message)

    def _keep(self, message: MediaMessage) -> None:
        self._gop_bytes += len(message.payload)
        if self._gop_bytes > self._max_gop_bytes:
            # Too long a GOP to keep (or audio only): start again from here.
            self.gop = []
            self._gop_bytes = 0
            return
        self.gop.append(message)

    def _check_codec(self, kind: str, codec: str, accepted: frozenset[str]) -> None:
        known = self.video_codec if kind == "video" else self.audio_codec
        if codec == known:
            return
        if codec not in accepted:
            raise UnsupportedCodec(
                "unsupported %s codec %r (accepted: %s)"
                % (kind, codec, ", ".join(sorted(accepted)))
            )
        if kind == "video":
            self.video_codec = codec
        else:
            self.audio_codec = codec

    def _fan_out(self, message: MediaMessage) -> None:
        for player in list(self.players):
            player.send(message)
        for consumer in self.consumers:
            try:
                consumer.media(message)
            except Exception:
                self.log.failure(
                    "consumer {consumer} of {stream} failed; detaching it",
                    consumer=consumer,
                    stream=self.name,
                )
                self.consumers.remove(consumer)

    def start_messages(self) -> list[MediaMessage]:
        """What a player joining now is sent first, in order."""
        first = [
            m for m in (self.metadata, self.video_header, self.audio_header) if m is not None
        ]
        return first + self.gop


class StreamHub:
    """The registry of live streams in one role of one process."""

    log = Logger()

    def __init__(
        self,
        role: str,
        consumer_factories: Iterable[IConsumerFactory] = (),
        max_gop_bytes: int = DEFAULT_MAX_GOP_BYTES,
        video_codecs: Iterable[str] = DEFAULT_VIDEO_CODECS,
        audio_codecs: Iterable[str] = DEFAULT_AUDIO_CODECS,
    ) -> None:
        self.role = role
        self.streams: dict[str, LiveStream] = {}
        self.consumer_factories = list(consumer_factories)
        self._max_gop_bytes = max_gop_bytes
        self._video_codecs = frozenset(video_codecs)
        self._audio_codecs = frozenset(audio_codecs)
        self._live_gauge = RTMP_STREAMS_LIVE.labels(role=role)

    def publish(self, name: str, publisher: IPublisher) -> LiveStream:
        """Start ``name``; raise :class:`AlreadyPublishing` if it is live."""
        if name in self.streams:
            raise AlreadyPublishing(name)
        stream = LiveStream(
            name,
            publisher,
            (),
            self.role,
            self._max_gop_bytes,
            self._video_codecs,
            self._audio_codecs,
        )
        for factory in self.consumer_factories:
            consumer = factory.consumer_for(stream)
            if consumer is not None:
                stream.consumers.append(consumer)
        self.streams[name] = stream
        self._live_gauge.set(len(self.streams))
        self.log.info(
            "publish {stream} by {publisher}", stream=name, publisher=publisher.description
        )
        return stream

    def unpublish(self, stream: LiveStream, reason: str) -> None:
        if self.streams.get(stream.name) is not stream:
            return
        del self.streams[stream.name]
        self._live_gauge.set(len(self.streams))
        stream.ended = True
        self.log.info("unpublish {stream}: {reason}", stream=stream.name, reason=reason)
        for player in list(stream.players):
            player.stream_ended()
        stream.players = []
        for consumer in stream.consumers:
            try:
                consumer.ended(reason)
            except Exception:
                self.log.failure("consumer of {stream} failed to end", stream=stream.name)

    def play(self, name: str, player: IPlayer) -> LiveStream:
        """Attach ``player`` to ``name``; raise :class:`StreamNotFound` if not live."""
        stream = self.streams.get(name)
        if stream is None:
            raise StreamNotFound(name)
        for message in stream.start_messages():
            player.send(message)
        stream.players.append(player)
        self._players_changed(stream)
        return stream

    def stop_playing(self, stream: LiveStream, player: IPlayer) -> None:
        if player in stream.players:
            stream.players.remove(player)
            self._players_changed(stream)

    @staticmethod
    def _players_changed(stream: LiveStream) -> None:
        """Tell a publisher that wants to know (a pull from upstream) how many players it has."""
        changed = getattr(stream.publisher, "players_changed", None)
        if changed is not None:
            changed(len(stream.players))

