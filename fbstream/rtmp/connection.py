"""
RTMP connections, sans-IO: bytes in, events out, bytes to send.

:class:`ServerConnection` speaks the server side of the publish flow of ffmpeg
and OBS (connect, releaseStream, FCPublish, createStream, publish,
``@setDataFrame onMetaData``, FCUnpublish, deleteStream) and of ``play``;
:class:`ClientConnection` the client side (connect, createStream, publish or
play), used to relay a stream to the next tier and by tests.

Decisions that need the rest of the server (may this name be published? is
that stream live?) come out as request events; the owner answers them with
``accept_*``/``reject_*`` calls, the way ``h2.H2Connection`` is driven.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import Any, Generic, TypeAlias, TypeVar

import attrs

from fbstream.ratelimit import TokenBucket
from fbstream.rtmp import amf0
from fbstream.rtmp import messages as m
from fbstream.rtmp.chunk import (
    DEFAULT_MAX_CHUNK_STREAMS,
    DEFAULT_MAX_MESSAGE_SIZE,
    ChunkDecoder,
    ChunkEncoder,
    Message,
    parse_u32,
)
from fbstream.rtmp.errors import ProtocolError
from fbstream.rtmp.flv import split_aggregate
from fbstream.rtmp.handshake import ClientHandshake, ServerHandshake

#: The acknowledgement window we ask peers to use, and bandwidth we announce.
WINDOW_ACK_SIZE = 2_500_000
#: The chunk size we send with (OBS uses the same).
OUT_CHUNK_SIZE = 4096
#: How many message streams (createStream) one connection may hold.
MAX_MESSAGE_STREAMS = 8


# Events -------------------------------------------------------------------


@attrs.frozen
class ConnectRequest:
    transaction_id: float
    app: str
    tc_url: str
    properties: dict[str, Any]


@attrs.frozen
class PublishRequest:
    stream_id: int
    name: str
    query: str
    publish_type: str


@attrs.frozen
class PlayRequest:
    stream_id: int
    name: str
    query: str


@attrs.frozen
class MediaReceived:
    """An audio (8) or video (9) message on a message stream."""

    stream_id: int
    type_id: int
    timestamp: int
    payload: bytes


@attrs.frozen
class DataReceived:
    """An AMF0 data message; ``@setDataFrame`` is already stripped from ``payload``."""

    stream_id: int
    timestamp: int
    name: str
    values: list[Any]
    payload: bytes


@attrs.frozen
class StreamClosed:
    stream_id: int
    reason: str


@attrs.frozen
class Connected:
    info: dict[str, Any]


@attrs.frozen
class StreamCreated:
    stream_id: int


@attrs.frozen
class StatusReceived:
    stream_id: int
    level: str
    code: str
    description: str


@attrs.frozen
class CommandFailed:
    """A ``_error`` answer to one of our commands."""

    command: str
    info: Any


#: What :meth:`ServerConnection.receive` returns: requests to answer, and a
#: publisher's media.
ServerEvent: TypeAlias = (
    ConnectRequest | PublishRequest | PlayRequest | MediaReceived | DataReceived | StreamClosed
)
#: What :meth:`ClientConnection.receive` returns: answers to its calls, and
#: the media of a stream it plays.
ClientEvent: TypeAlias = (
    Connected | StreamCreated | StatusReceived | CommandFailed | MediaReceived | DataReceived
)
#: Every event either side returns.
Event: TypeAlias = ServerEvent | ClientEvent

_E = TypeVar("_E", bound=Event)


#: Protocol control and user control messages (types 1 to 6: pings, window
#: sizes, acknowledgements) a peer may send, a second and at once. A client
#: sends a handful a minute; a flood of pings only costs us pongs.
CONTROL_RATE = 50
CONTROL_BURST = 200
#: Commands a client may send after ``connect`` before it is answered.
MAX_EARLY_COMMANDS = 8
#: Bytes of unfinished chunks and messages a connection may hold before it
#: is an accepted publisher (commands are a few hundred bytes).
UNTRUSTED_BUDGET = 64 * 1024


class _State(enum.Enum):
    HANDSHAKE = "handshake"
    AWAIT_CONNECT = "await-connect"
    CONNECTING = "connecting"
    CONNECTED = "connected"


class StreamState(enum.Enum):
    """What one message stream of a server connection is for."""

    #: Made by createStream, or given back by FCUnpublish, closeStream or a refusal.
    CREATED = "created"
    #: Asked to publish or play; the server has not answered yet.
    PUBLISH_PENDING = "publish-pending"
    PLAY_PENDING = "play-pending"
    PUBLISHING = "publish"
    PLAYING = "play"


def _split_name(raw: Any) -> tuple[str, str]:
    if not isinstance(raw, str):
        raise ProtocolError("stream name is not a string")
    name, _, query = raw.partition("?")
    return name, query


class _Connection(Generic[_E]):
    """What both sides share; ``_E`` is the events its side returns."""

    def __init__(
        self,
        handshake: ServerHandshake | ClientHandshake,
        max_message_size: int,
        max_chunk_streams: int,
        clock: Callable[[], float],
    ) -> None:
        self._handshake = handshake
        #: Seconds now, by whatever clock the owner keeps (its reactor's).
        self.clock = clock
        #: Control messages (pings, acknowledgements...) the peer may still
        #: send now: a bucket of CONTROL_BURST, refilled at CONTROL_RATE a second.
        self._controls = TokenBucket(CONTROL_RATE, CONTROL_BURST)
        self._decoder = ChunkDecoder(max_message_size, max_chunk_streams)
        self._encoder = ChunkEncoder()
        self._out: list[bytes] = []
        self._state = _State.HANDSHAKE
        self._peer_window = 0
        self._acked = 0
        #: What the peer last acknowledged having received from us (the
        #: 32 bits it sends), and the same counted on past 4 GiB.
        self.peer_acknowledged = 0
        self.acknowledged = 0
        #: Bytes sent since the handshake: what the peer's acknowledgements count.
        self.bytes_sent = 0
        self._uncounted = 0

    # Plumbing ------------------------------------------------------------

    def bytes_to_send(self) -> bytes:
        """Everything queued for the peer since the last call."""
        if self._state is _State.HANDSHAKE:
            return self._handshake.bytes_to_send()
        out = self._out
        if not out:
            return b""
        self._out = []
        data = b"".join(out)
        self.bytes_sent += len(data) - self._uncounted
        self._uncounted = 0
        return data

    @property
    def bytes_received(self) -> int:
        return self._decoder.bytes_received

    def receive(self, data: bytes) -> list[_E]:
        """Feed bytes from the peer; return the events they complete."""
        if self._state is _State.HANDSHAKE:
            rest = self._handshake.receive(data)
            if rest is None:
                return []
            last = self._handshake.bytes_to_send()
            self._out.append(last)
            self._uncounted = len(last)
            self._handshake_done()
            data = rest
        events: list[_E] = []
        for msg in self._decoder.feed(data):
            self._message(msg, events)
        received = self._decoder.bytes_received
        if self._peer_window and received - self._acked >= self._peer_window:
            self._acked = received
            self._control(m.ACKNOWLEDGEMENT, m.u32(received))
        return events

    def _handshake_done(self) -> None:
        self._state = _State.AWAIT_CONNECT

    def _send(self, csid: int, timestamp: int, type_id: int, stream_id: int, payload: bytes) -> None:
        self._out.append(self._encoder.encode(csid, timestamp, type_id, stream_id, payload))

    def _control(self, type_id: int, payload: bytes) -> None:
        self._send(m.CSID_CONTROL, 0, type_id, 0, payload)

    def _command(self, stream_id: int, name: str, tid: float, *args: Any) -> None:
        csid = m.CSID_COMMAND if stream_id == 0 else m.CSID_STATUS
        self._send(csid, 0, m.COMMAND_AMF0, stream_id, m.command(name, tid, *args))

    def set_chunk_size(self, size: int) -> None:
        self._out.append(self._encoder.set_chunk_size(size))

    def send_status(self, stream_id: int, level: str, code: str, description: str) -> None:
        self._command(
            stream_id, "onStatus", 0, None, m.status_info(level, code, description)
        )

    def send_media(self, stream_id: int, type_id: int, timestamp: int, payload: bytes) -> None:
        """Send an audio, video or data message on ``stream_id``."""
        if type_id == m.VIDEO:
            csid = m.CSID_VIDEO
        elif type_id == m.AUDIO:
            csid = m.CSID_AUDIO
        else:
            csid = m.CSID_DATA
        self._out.append(self._encoder.encode(csid, timestamp, type_id, stream_id, payload))

    # Incoming messages ---------------------------------------------------

    def _message(self, msg: Message, events: list[_E]) -> None:
        t = msg.type_id
        if t == m.VIDEO or t == m.AUDIO:
            self._media(msg, events)
        elif t == m.DATA_AMF0 or t == m.DATA_AMF3:
            self._data(msg, events)
        elif t == m.COMMAND_AMF0 or t == m.COMMAND_AMF3:
            name, tid, args = m.parse_command(msg.payload, t)
            self._on_command(msg.stream_id, name, tid, args, events)
        elif t <= m.SET_PEER_BANDWIDTH and self._controls.take(self.clock()):
            raise ProtocolError("more than %d control messages a second" % (CONTROL_RATE,))
        elif t == m.SET_CHUNK_SIZE or t == m.ABORT:
            pass  # applied by the decoder before the next chunk
        elif t == m.ACKNOWLEDGEMENT:
            value = parse_u32(msg.payload)
            self.acknowledged += (value - self.peer_acknowledged) & 0xFFFFFFFF
            self.peer_acknowledged = value
        elif t == m.WINDOW_ACK_SIZE:
            self._peer_window = parse_u32(msg.payload)
        elif t == m.SET_PEER_BANDWIDTH:
            if len(msg.payload) < 5:
                raise ProtocolError("Set Peer Bandwidth message is too short")
        elif t == m.USER_CONTROL:
            event, value = m.parse_user_control(msg.payload)
            if event == m.UC_PING_REQUEST:
                self._control(m.USER_CONTROL, m.user_control(m.UC_PING_RESPONSE, value))
        elif t == m.AGGREGATE:
            for type_id, timestamp, payload in split_aggregate(msg.payload, msg.timestamp):
                self._message(
                    Message(msg.csid, timestamp, type_id, msg.stream_id, payload), events
                )
        elif t == m.SHARED_OBJECT_AMF0 or t == m.SHARED_OBJECT_AMF3:
            pass  # shared objects are not supported; they affect nothing here
        else:
            raise ProtocolError("unknown message type %d" % (t,))

    def _media(self, msg: Message, events: list[_E]) -> None:
        raise NotImplementedError

    def _data(self, msg: Message, events: list[_E]) -> None:
        raise NotImplementedError

    @staticmethod
    def _parse_data(msg: Message) -> DataReceived:
        """An AMF0 (or AMF3-wrapped AMF0) data message, ``@setDataFrame`` stripped."""
        payload = msg.payload
        if msg.type_id == m.DATA_AMF3:
            if not payload or payload[0] != 0:
                raise ProtocolError("AMF3-encoded data messages are not supported")
            payload = payload[1:]
        first, pos = amf0.decode(payload)
        if first == "@setDataFrame":
            payload = payload[pos:]
            first, pos = amf0.decode(payload)
        values = amf0.decode_all(payload[pos:])
        if not isinstance(first, str):
            raise ProtocolError("data message without a name")
        return DataReceived(msg.stream_id, msg.timestamp, first, values, payload)

    def _on_command(
        self, stream_id: int, name: str, tid: float, args: list[Any], events: list[_E]
    ) -> None:
        raise NotImplementedError


class ServerConnection(_Connection[ServerEvent]):
    """The server side of one RTMP connection."""

    def __init__(
        self,
        time_ms: int = 0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_chunk_streams: int = DEFAULT_MAX_CHUNK_STREAMS,
        out_chunk_size: int = OUT_CHUNK_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(ServerHandshake(time_ms), max_message_size, max_chunk_streams, clock)
        # Until it is an accepted publisher, a peer gets a small memory budget:
        # a connection that never gets that far cannot hold megabytes.
        self._publisher_budget = self._decoder.max_pending
        self._decoder.max_pending = UNTRUSTED_BUDGET
        self._out_chunk_size = out_chunk_size
        self._next_stream_id = 1
        #: Message stream id -> what it is for.
        self.streams: dict[int, StreamState] = {}
        self._published_names: dict[str, int] = {}
        self.app = ""
        #: Commands that came after ``connect`` but before it was accepted
        #: (a client that pipelines connect and createStream in one write).
        self._early: list[tuple[int, str, float, list[Any]]] = []

    def _on_command(
        self, stream_id: int, name: str, tid: float, args: list[Any], events: list[ServerEvent]
    ) -> None:
        if self._state is _State.CONNECTING and name != "connect":
            if len(self._early) >= MAX_EARLY_COMMANDS:
                raise ProtocolError("more than %d commands before the connection was accepted"
                                    % (MAX_EARLY_COMMANDS,))
            self._early.append((stream_id, name, tid, args))
            return
        if name == "connect":
            if self._state is not _State.AWAIT_CONNECT:
                raise ProtocolError("connect on a connection that is already connected")
            props = args[0] if args and isinstance(args[0], dict) else {}
            app = props.get("app", "")
            tc_url = props.get("tcUrl", "")
            self.app = app if isinstance(app, str) else ""
            self._state = _State.CONNECTING
            events.append(
                ConnectRequest(tid, self.app, tc_url if isinstance(tc_url, str) else "", props)
            )
            return
        if self._state is not _State.CONNECTED:
            raise ProtocolError("command %r before the connection was accepted" % (name,))
        if name == "createStream":
            if len(self.streams) >= MAX_MESSAGE_STREAMS:
                self._command(0, "_error", tid, None, m.status_info(
                    "error", "NetConnection.Call.Failed", "too many streams"))
                return
            sid = self._next_stream_id
            self._next_stream_id += 1
            self.streams[sid] = StreamState.CREATED
            self._command(0, "_result", tid, None, float(sid))
        elif name in ("releaseStream", "FCPublish"):
            if tid:
                self._command(0, "_result", tid, None, amf0.UNDEFINED_VALUE)
        elif name == "getStreamLength":
            # ffmpeg's player reads a number here; 0 means a live stream.
            if tid:
                self._command(0, "_result", tid, None, 0.0)
        elif name == "publish":
            if self.streams.get(stream_id) is not StreamState.CREATED:
                raise ProtocolError("publish on message stream %d, which is not free" % (stream_id,))
            sname, query = _split_name(args[1] if len(args) > 1 else None)
            ptype = args[2] if len(args) > 2 and isinstance(args[2], str) else "live"
            self.streams[stream_id] = StreamState.PUBLISH_PENDING
            events.append(PublishRequest(stream_id, sname, query, ptype))
        elif name == "play":
            if self.streams.get(stream_id) is not StreamState.CREATED:
                raise ProtocolError("play on message stream %d, which is not free" % (stream_id,))
            sname, query = _split_name(args[1] if len(args) > 1 else None)
            self.streams[stream_id] = StreamState.PLAY_PENDING
            events.append(PlayRequest(stream_id, sname, query))
        elif name == "FCUnpublish":
            sname, _ = _split_name(args[1] if len(args) > 1 else "")
            sid = self._published_names.pop(sname, 0)  # 0 is never a publishing stream
            if sid and self.streams.get(sid) is StreamState.PUBLISHING:
                self.streams[sid] = StreamState.CREATED
                events.append(StreamClosed(sid, "FCUnpublish"))
            if tid:
                self._command(0, "_result", tid, None, amf0.UNDEFINED_VALUE)
        elif name == "deleteStream":
            target = args[1] if len(args) > 1 else stream_id
            if isinstance(target, float) and target.is_integer():
                self._close_stream(int(target), "deleteStream", events, delete=True)
        elif name == "closeStream":
            self._close_stream(stream_id, "closeStream", events, delete=False)
        # Anything else (pause, seek, receiveAudio, _checkbw, ...) is ignored.

    def _close_stream(self, sid: int, reason: str, events: list[ServerEvent], delete: bool) -> None:
        state = self.streams.get(sid)
        if state is None:
            return
        if state is not StreamState.CREATED:
            events.append(StreamClosed(sid, reason))
            for name, owner in list(self._published_names.items()):
                if owner == sid:
                    del self._published_names[name]
        if delete:
            del self.streams[sid]
        else:
            self.streams[sid] = StreamState.CREATED

    def _media(self, msg: Message, events: list[ServerEvent]) -> None:
        # Media on a stream that is not publishing is dropped, as FMS does.
        if self.streams.get(msg.stream_id) is StreamState.PUBLISHING:
            events.append(MediaReceived(msg.stream_id, msg.type_id, msg.timestamp, msg.payload))

    def _data(self, msg: Message, events: list[ServerEvent]) -> None:
        if self.streams.get(msg.stream_id) is StreamState.PUBLISHING:
            events.append(self._parse_data(msg))

    # Answers -------------------------------------------------------------

    def accept_connect(self, request: ConnectRequest) -> list[ServerEvent]:
        """Accept; returns the events of commands the client sent before this answer."""
        self._state = _State.CONNECTED
        self._control(m.WINDOW_ACK_SIZE, m.u32(WINDOW_ACK_SIZE))
        self._control(m.SET_PEER_BANDWIDTH, m.set_peer_bandwidth(WINDOW_ACK_SIZE))
        self._control(m.USER_CONTROL, m.user_control(m.UC_STREAM_BEGIN, 0))
        self.set_chunk_size(self._out_chunk_size)
        self._command(
            0,
            "_result",
            request.transaction_id,
            {"fmsVer": "FMS/3,0,1,123", "capabilities": 31.0, "mode": 1.0},
            m.status_info(
                "status",
                "NetConnection.Connect.Success",
                "Connection succeeded.",
                objectEncoding=0.0,
            ),
        )
        self._command(0, "onBWDone", 0, None)
        events: list[ServerEvent] = []
        early, self._early = self._early, []
        for stream_id, name, tid, args in early:
            self._on_command(stream_id, name, tid, args, events)
        return events

    def reject_connect(self, request: ConnectRequest, description: str) -> None:
        self._early = []
        self._command(
            0,
            "_error",
            request.transaction_id,
            None,
            m.status_info("error", "NetConnection.Connect.Rejected", description),
        )

    def accept_publish(self, request: PublishRequest) -> None:
        # An accepted publisher may send messages as large as it likes (up to max_message_size).
        self._decoder.max_pending = self._publisher_budget
        self.streams[request.stream_id] = StreamState.PUBLISHING
        self._published_names[request.name] = request.stream_id
        self._control(m.USER_CONTROL, m.user_control(m.UC_STREAM_BEGIN, request.stream_id))
        self.send_status(
            request.stream_id,
            "status",
            "NetStream.Publish.Start",
            "%s is now published." % (request.name,),
        )

    def reject_publish(self, request: PublishRequest, code: str, description: str) -> None:
        if self.streams.get(request.stream_id) is StreamState.PUBLISH_PENDING:
            self.streams[request.stream_id] = StreamState.CREATED
        self.send_status(request.stream_id, "error", code, description)

    def accept_play(self, request: PlayRequest) -> None:
        sid = request.stream_id
        self.streams[sid] = StreamState.PLAYING
        self._control(m.USER_CONTROL, m.user_control(m.UC_STREAM_IS_RECORDED, sid))
        self._control(m.USER_CONTROL, m.user_control(m.UC_STREAM_BEGIN, sid))
        self.send_status(sid, "status", "NetStream.Play.Reset", "Playing and resetting %s." % (request.name,))
        self.send_status(sid, "status", "NetStream.Play.Start", "Started playing %s." % (request.name,))
        self.send_media(sid, m.DATA_AMF0, 0, amf0.encode("|RtmpSampleAccess", True, True))

    def reject_play(self, request: PlayRequest, code: str, description: str) -> None:
        if self.streams.get(request.stream_id) is StreamState.PLAY_PENDING:
            self.streams[request.stream_id] = StreamState.CREATED
        self.send_status(request.stream_id, "error", code, description)

    def end_play(self, stream_id: int, name: str) -> None:
        """Tell a player its stream was unpublished."""
        self._control(m.USER_CONTROL, m.user_control(m.UC_STREAM_EOF, stream_id))
        self.send_status(
            stream_id, "status", "NetStream.Play.UnpublishNotify", "%s is now unpublished." % (name,)
        )


class ClientConnection(_Connection[ClientEvent]):
    """
    The client side of one RTMP connection: after the handshake it sends
    ``connect`` for ``app``; then :meth:`create_stream`, :meth:`publish` or
    :meth:`play` as the events allow.
    """

    def __init__(
        self,
        app: str,
        tc_url: str,
        time_ms: int = 0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_chunk_streams: int = DEFAULT_MAX_CHUNK_STREAMS,
        out_chunk_size: int = OUT_CHUNK_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(ClientHandshake(time_ms), max_message_size, max_chunk_streams, clock)
        self._app = app
        self._tc_url = tc_url
        self._out_chunk_size = out_chunk_size
        self._tid = 1.0
        self._pending: dict[float, str] = {}

    def _handshake_done(self) -> None:
        self._state = _State.CONNECTING
        self.set_chunk_size(self._out_chunk_size)
        self._call(
            "connect",
            {
                "app": self._app,
                "type": "nonprivate",
                "flashVer": "FMLE/3.0 (compatible; fbstream)",
                "tcUrl": self._tc_url,
            },
        )

    def _call(self, name: str, *args: Any, stream_id: int = 0) -> float:
        tid = self._tid
        self._tid += 1
        self._pending[tid] = name
        self._command(stream_id, name, tid, *args)
        return tid

    def create_stream(self) -> None:
        self._call("createStream", None)

    def ask_acknowledgements(self, window: int) -> None:
        """Ask the server to acknowledge every ``window`` bytes it receives from us."""
        self._control(m.WINDOW_ACK_SIZE, m.u32(window))

    def publish(self, stream_id: int, name: str, publish_type: str = "live") -> None:
        self._command(0, "releaseStream", 0, None, name)
        self._command(0, "FCPublish", 0, None, name)
        self._command(stream_id, "publish", 0, None, name, publish_type)

    def play(self, stream_id: int, name: str) -> None:
        self._command(stream_id, "play", 0, None, name, -2000.0)

    def unpublish(self, stream_id: int, name: str) -> None:
        self._command(0, "FCUnpublish", 0, None, name)
        self._command(0, "deleteStream", 0, None, float(stream_id))

    def _media(self, msg: Message, events: list[ClientEvent]) -> None:
        events.append(MediaReceived(msg.stream_id, msg.type_id, msg.timestamp, msg.payload))

    def _data(self, msg: Message, events: list[ClientEvent]) -> None:
        events.append(self._parse_data(msg))

    def _on_command(
        self, stream_id: int, name: str, tid: float, args: list[Any], events: list[ClientEvent]
    ) -> None:
        if name in ("_result", "_error"):
            call = self._pending.pop(tid, None)
            if call is None:
                return
            if name == "_error":
                events.append(CommandFailed(call, args[1] if len(args) > 1 else None))
            elif call == "connect":
                self._state = _State.CONNECTED
                info = args[1] if len(args) > 1 and isinstance(args[1], dict) else {}
                events.append(Connected(info))
            elif call == "createStream":
                sid = args[1] if len(args) > 1 else None
                if not isinstance(sid, float) or not sid.is_integer() or sid <= 0:
                    raise ProtocolError("createStream answered without a stream id")
                events.append(StreamCreated(int(sid)))
        elif name == "onStatus":
            info = args[1] if len(args) > 1 and isinstance(args[1], dict) else {}
            events.append(
                StatusReceived(
                    stream_id,
                    str(info.get("level", "")),
                    str(info.get("code", "")),
                    str(info.get("description", "")),
                )
            )
        # onBWDone, onFCPublish, |RtmpSampleAccess and the like need no answer.
