"""The sans-IO server and client connections, talking to each other in memory."""

from collections.abc import Sequence
from typing import TypeVar

import pytest

from fbstream.rtmp import amf0
from fbstream.rtmp import connection as c
from fbstream.rtmp import messages as m
from fbstream.rtmp.chunk import MAX_CHUNK_SIZE, ChunkEncoder, Message
from fbstream.rtmp.errors import ProtocolError
from fbstream.rtmp.handshake import ClientHandshake

E = TypeVar("E", bound=c.Event)


def only(events: Sequence[c.Event], kind: type[E]) -> E:
    """The one event of ``events``, which must be a ``kind``."""
    (event,) = events
    assert isinstance(event, kind), event
    return event


class Pair:
    def __init__(self, step: int | None = None) -> None:
        self.server = c.ServerConnection()
        self.client = c.ClientConnection("live", "rtmp://127.0.0.1/live")
        self.step = step
        self.server_events: list[c.ServerEvent] = []
        self.client_events: list[c.ClientEvent] = []

    def _feed(self, conn: c._Connection[E], data: bytes) -> list[E]:
        if self.step is None:
            return conn.receive(data)
        out: list[E] = []
        for i in range(0, len(data), self.step):
            out += conn.receive(data[i : i + self.step])
        return out

    def pump(self) -> tuple[list[c.ServerEvent], list[c.ClientEvent]]:
        for _ in range(20):
            a = self.client.bytes_to_send()
            b = self.server.bytes_to_send()
            if not a and not b:
                break
            if a:
                self.server_events += self._feed(self.server, a)
            if b:
                self.client_events += self._feed(self.client, b)
        s, cl = self.server_events, self.client_events
        self.server_events, self.client_events = [], []
        return s, cl

    def publish(self, name: str = "cam1?token=abc") -> c.PublishRequest:
        req = only(self.pump()[0], c.ConnectRequest)
        assert req.app == "live"
        self.server.accept_connect(req)
        only(self.pump()[1], c.Connected)
        self.client.create_stream()
        created = only(self.pump()[1], c.StreamCreated)
        self.client.publish(created.stream_id, name)
        return only(self.pump()[0], c.PublishRequest)


@pytest.mark.parametrize("step", [None, 1])
def test_publish_flow(step):
    pair = Pair(step)
    preq = pair.publish()
    assert preq == c.PublishRequest(1, "cam1", "token=abc", "live")
    assert pair.server.streams == {1: c.StreamState.PUBLISH_PENDING}
    pair.server.accept_publish(preq)
    assert pair.server.streams == {1: c.StreamState.PUBLISHING}
    status = only(pair.pump()[1], c.StatusReceived)
    assert status.code == "NetStream.Publish.Start" and status.level == "status"
    pair.client.send_media(1, m.DATA_AMF0, 0, amf0.encode("@setDataFrame", "onMetaData", amf0.ECMAArray({"width": 1280.0})))
    video = b"\x17\x01\x00\x00\x00" + bytes(range(256)) * 40
    pair.client.send_media(1, m.VIDEO, 40, video)
    pair.client.send_media(1, m.AUDIO, 41, b"\xaf\x01abc")
    events, _ = pair.pump()
    data = events[0]
    assert isinstance(data, c.DataReceived)
    assert data.name == "onMetaData" and data.values == [amf0.ECMAArray({"width": 1280.0})]
    assert amf0.decode_all(data.payload)[0] == "onMetaData"  # @setDataFrame stripped
    assert events[1] == c.MediaReceived(1, m.VIDEO, 40, video)
    assert events[2] == c.MediaReceived(1, m.AUDIO, 41, b"\xaf\x01abc")
    pair.client.unpublish(1, "cam1")
    events, _ = pair.pump()
    assert events == [c.StreamClosed(1, "FCUnpublish")]
    assert 1 not in pair.server.streams


def test_reject_publish_sends_an_error_status():
    pair = Pair()
    preq = pair.publish()
    pair.server.reject_publish(preq, "NetStream.Publish.BadName", "already publishing")
    assert pair.server.streams == {1: c.StreamState.CREATED}  # free to publish again
    status = only(pair.pump()[1], c.StatusReceived)
    assert status.level == "error" and status.code == "NetStream.Publish.BadName"


def test_reject_connect():
    pair = Pair()
    req = only(pair.pump()[0], c.ConnectRequest)
    pair.server.reject_connect(req, "no such app")
    failed = only(pair.pump()[1], c.CommandFailed)
    assert failed.info["code"] == "NetConnection.Connect.Rejected"


def test_play_flow_and_media_to_player():
    pair = Pair()
    req = only(pair.pump()[0], c.ConnectRequest)
    pair.server.accept_connect(req)
    pair.pump()
    pair.client.create_stream()
    created = only(pair.pump()[1], c.StreamCreated)
    pair.client.play(created.stream_id, "cam1")
    preq = only(pair.pump()[0], c.PlayRequest)
    assert preq == c.PlayRequest(1, "cam1", "")
    pair.server.accept_play(preq)
    pair.server.send_media(1, m.VIDEO, 0x01000000, b"\x17\x01\x00\x00\x00" + b"x" * 9000)
    _, events = pair.pump()
    codes = [e.code for e in events if isinstance(e, c.StatusReceived)]
    assert codes == ["NetStream.Play.Reset", "NetStream.Play.Start"]
    media = [e for e in events if isinstance(e, c.MediaReceived)]
    assert media[0].timestamp == 0x01000000 and len(media[0].payload) == 9005


def test_server_acknowledges_every_window():
    pair = Pair()
    preq = pair.publish()
    pair.server.accept_publish(preq)
    pair.pump()
    # The client asks the server to ack every 10 kB.
    pair.client._control(m.WINDOW_ACK_SIZE, m.u32(10_000))
    for i in range(10):
        pair.client.send_media(1, m.AUDIO, i, b"\xaf\x01" + b"a" * 3000)
    pair.pump()
    assert pair.client.peer_acknowledged >= 30_000 - 10_000


class RecordingClient(c.ClientConnection):
    def __init__(self, *a):
        super().__init__(*a)
        self.raw = []

    def _message(self, msg, events):
        self.raw.append(msg)
        super()._message(msg, events)


def test_ping_is_answered():
    pair = Pair()
    pair.client = RecordingClient("live", "rtmp://127.0.0.1/live")
    req = only(pair.pump()[0], c.ConnectRequest)
    pair.server.accept_connect(req)
    pair.pump()
    pair.client._control(m.USER_CONTROL, m.user_control(m.UC_PING_REQUEST, 777))
    pair.pump()
    assert Message(2, 0, m.USER_CONTROL, 0, m.user_control(m.UC_PING_RESPONSE, 777)) in pair.client.raw


def test_aggregate_messages_are_split():
    from fbstream.rtmp import flv

    pair = Pair()
    preq = pair.publish()
    pair.server.accept_publish(preq)
    pair.pump()
    agg = flv.file_tag(9, 0, b"\x17\x01\x00\x00\x00k") + flv.file_tag(8, 23, b"\xaf\x01a")
    pair.client.send_media(1, m.AGGREGATE, 1000, agg)
    events, _ = pair.pump()
    assert events == [
        c.MediaReceived(1, m.VIDEO, 1000, b"\x17\x01\x00\x00\x00k"),
        c.MediaReceived(1, m.AUDIO, 1023, b"\xaf\x01a"),
    ]


def raw_server_after_handshake():
    server = c.ServerConnection()
    client = ClientHandshake()
    server.receive(client.bytes_to_send())
    client.receive(server.bytes_to_send())
    return server, client.bytes_to_send()


def test_unknown_message_type_is_a_protocol_error():
    server, c2 = raw_server_after_handshake()
    enc = ChunkEncoder()
    with pytest.raises(ProtocolError, match="unknown message type 99"):
        server.receive(c2 + enc.encode(3, 0, 99, 0, b"x"))


def test_command_before_connect_is_a_protocol_error():
    server, c2 = raw_server_after_handshake()
    enc = ChunkEncoder()
    with pytest.raises(ProtocolError, match="before the connection was accepted"):
        server.receive(c2 + enc.encode(3, 0, m.COMMAND_AMF0, 0, m.command("createStream", 2, None)))


def test_amf3_command_is_refused_cleanly():
    server, c2 = raw_server_after_handshake()
    enc = ChunkEncoder()
    with pytest.raises(ProtocolError, match="AMF3"):
        server.receive(c2 + enc.encode(3, 0, m.COMMAND_AMF3, 0, b"\x00\x11\x06\x07abc"))


def test_amf3_wrapped_amf0_command_is_read():
    server, c2 = raw_server_after_handshake()
    enc = ChunkEncoder()
    (req,) = server.receive(
        c2 + enc.encode(3, 0, m.COMMAND_AMF3, 0, b"\x00" + m.command("connect", 1, {"app": "live"}))
    )
    assert isinstance(req, c.ConnectRequest)


def test_obs_style_chunk_size_before_connect():
    server, c2 = raw_server_after_handshake()
    enc = ChunkEncoder()
    data = c2 + enc.set_chunk_size(4096) + enc.encode(
        3, 0, m.COMMAND_AMF0, 0, m.command("connect", 1, {"app": "live", "tcUrl": "rtmp://h/live", "x": "y" * 500})
    )
    req = only(server.receive(data), c.ConnectRequest)
    assert req.tc_url == "rtmp://h/live"


def test_too_many_streams():
    pair = Pair()
    req = only(pair.pump()[0], c.ConnectRequest)
    pair.server.accept_connect(req)
    pair.pump()
    for _ in range(c.MAX_MESSAGE_STREAMS + 1):
        pair.client.create_stream()
    _, events = pair.pump()
    assert len([e for e in events if isinstance(e, c.StreamCreated)]) == c.MAX_MESSAGE_STREAMS
    assert isinstance(events[-1], c.CommandFailed)


def test_truncated_user_control():
    server, c2 = raw_server_after_handshake()
    enc = ChunkEncoder()
    with pytest.raises(ProtocolError, match="too short"):
        server.receive(c2 + enc.encode(2, 0, m.USER_CONTROL, 0, b"\x00"))


@pytest.mark.parametrize("step", [None, 1])
def test_commands_pipelined_with_connect_wait_for_its_answer(step):
    """connect and createStream in one write: createStream is answered once connect is accepted."""
    pair = Pair(step)
    pair.server.receive(pair.client.bytes_to_send())  # C0C1
    pair.client.receive(pair.server.bytes_to_send())  # S0S1S2: the client now has C2 and connect
    pair.client.create_stream()
    pair.client.create_stream()
    events = pair._feed(pair.server, pair.client.bytes_to_send())  # all in one write
    req = only(events, c.ConnectRequest)
    assert pair.server.accept_connect(req) == []  # createStream answers itself, no event
    _, answers = pair.pump()
    assert [type(e) for e in answers] == [c.Connected, c.StreamCreated, c.StreamCreated]
    assert [e.stream_id for e in answers if isinstance(e, c.StreamCreated)] == [1, 2]


def test_a_flood_of_commands_before_connect_is_answered_is_refused():
    pair = Pair()
    pair.server.receive(pair.client.bytes_to_send())
    pair.client.receive(pair.server.bytes_to_send())
    for _ in range(c.MAX_EARLY_COMMANDS + 1):
        pair.client.create_stream()
    with pytest.raises(ProtocolError, match="before the connection was accepted"):
        pair.server.receive(pair.client.bytes_to_send())


def test_commands_held_for_a_refused_connect_are_dropped():
    pair = Pair()
    pair.server.receive(pair.client.bytes_to_send())
    pair.client.receive(pair.server.bytes_to_send())
    pair.client.create_stream()
    req = only(pair.server.receive(pair.client.bytes_to_send()), c.ConnectRequest)
    pair.server.reject_connect(req, "unknown application")
    _, events = pair.pump()
    assert [type(e) for e in events] == [c.CommandFailed]


def test_a_peer_not_yet_publishing_may_hold_little_memory():
    """Half a 16 MiB chunk before connect was 23 MiB held per connection; now it is a protocol error."""
    pair = Pair()
    pair.server.receive(pair.client.bytes_to_send())
    pair.client.receive(pair.server.bytes_to_send())
    enc = ChunkEncoder()
    data = enc.set_chunk_size(MAX_CHUNK_SIZE) + enc.encode(3, 0, m.COMMAND_AMF0, 0, b"\x02" * 1_000_000)
    with pytest.raises(ProtocolError, match="unfinished chunks"):
        for i in range(0, 200_000, 4096):  # the first 200 KB of it, as TCP delivers it
            pair.server.receive(pair.client.bytes_to_send() + data[i:i + 4096])


def test_an_accepted_publisher_may_send_large_messages():
    pair = Pair()
    preq = pair.publish()
    pair.server.accept_publish(preq)
    pair.pump()
    keyframe = b"\x17\x01\x00\x00\x00" + bytes(3_000_000)
    pair.client.send_media(preq.stream_id, m.VIDEO, 0, keyframe)
    events, _ = pair.pump()
    media = [e for e in events if isinstance(e, c.MediaReceived)]
    assert len(media) == 1 and len(media[0].payload) == len(keyframe)


def test_a_flood_of_pings_is_refused():
    pair = Pair()
    pair.server.receive(pair.client.bytes_to_send())
    pair.client.receive(pair.server.bytes_to_send())
    ping = ChunkEncoder().encode(2, 0, m.USER_CONTROL, 0, m.user_control(m.UC_PING_REQUEST, 1))
    with pytest.raises(ProtocolError, match="control messages a second"):
        pair.server.receive(pair.client.bytes_to_send() + ping * 5000)


def test_pings_at_a_client_s_pace_are_answered():
    pair = Pair()
    now = [1000.0]
    pair.server.clock = lambda: now[0]
    preq = pair.publish()
    enc = ChunkEncoder()
    for i in range(3000):  # ten minutes of a ping every 0.2 s
        now[0] += 0.2
        pair.server.receive(enc.encode(2, 0, m.USER_CONTROL, 0, m.user_control(m.UC_PING_REQUEST, i)))
    assert len(pair.server.bytes_to_send()) > 3000 * 10  # every pong
    assert preq.name == "cam1"
