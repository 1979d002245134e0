"""The Twisted RTMP protocols and the stream hub, over in-memory transports."""

from typing import cast

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from fbstream.live.rtmp import RTMPStatusError
from fbstream.media import IConsumerFactory, IStreamConsumer, MediaMessage
from fbstream.rtmp import amf0
from fbstream.rtmp.chunk import ChunkEncoder
from fbstream.rtmp.connection import CONTROL_BURST, CONTROL_RATE
from fbstream.rtmp.handshake import ClientHandshake
from fbstream.rtmp.messages import (
    COMMAND_AMF0,
    SET_CHUNK_SIZE,
    UC_PING_REQUEST,
    USER_CONTROL,
    VIDEO,
    command,
    user_control,
)
from tests.rtmp_helpers import (
    AAC_HEADER,
    AVC_HEADER,
    METADATA,
    Harness,
    aac,
    interframe,
    keyframe,
    start_publishing,
)


@implementer(IStreamConsumer)
class Recording:
    def __init__(self):
        self.messages = []
        self.reason = None

    def media(self, message):
        self.messages.append(message)

    def ended(self, reason):
        self.reason = reason


@implementer(IConsumerFactory)
class Recordings:
    def __init__(self):
        self.made = {}

    def consumer_for(self, stream):
        consumer = self.made[stream.name] = Recording()
        return consumer


class PublishTests(SynchronousTestCase):
    def setUp(self):
        self.h = Harness()
        self.recordings = Recordings()
        self.h.hub.consumer_factories.append(self.recordings)

    def publish_gop(self, client, pump, sid, start=0, frames=10):
        for ts in range(start, start + frames * 33, 33):
            client.send_media(sid, keyframe(ts) if ts == start else interframe(ts))
            client.send_media(sid, aac(ts))
        pump.flush()

    def test_publish_reaches_the_consumer(self):
        client, server, pump, sid, d = start_publishing(self, self.h)
        self.assertEqual(self.successResultOf(d).code, "NetStream.Publish.Start")
        for msg in (METADATA, AVC_HEADER, AAC_HEADER):
            client.send_media(sid, msg)
        self.publish_gop(client, pump, sid)
        stream = self.h.hub.streams["cam"]
        self.assertEqual(stream.metadata_values, {"width": 640.0, "height": 360.0})
        self.assertEqual(stream.video_codec, "avc1")
        self.assertEqual(stream.audio_codec, "AAC")
        rec = self.recordings.made["cam"]
        verifyObject(IStreamConsumer, rec)
        self.assertEqual(len(rec.messages), 3 + 20)
        self.assertEqual(rec.messages[3], keyframe(0))
        client.unpublish(sid, "cam")
        pump.flush()
        self.assertNotIn("cam", self.h.hub.streams)
        self.assertEqual(rec.reason, "FCUnpublish")

    def test_disconnect_ends_the_stream(self):
        client, server, pump, sid, d = start_publishing(self, self.h)
        client.transport.loseConnection()
        pump.flush()
        self.assertNotIn("cam", self.h.hub.streams)
        self.assertEqual(self.recordings.made["cam"].reason, "publisher disconnected")

    def test_second_publisher_is_refused_and_the_first_goes_on(self):
        first, _, pump1, sid1, d1 = start_publishing(self, self.h)
        self.successResultOf(d1)
        second, server2, pump2, sid2, d2 = start_publishing(self, self.h)
        failure = self.failureResultOf(d2, RTMPStatusError)
        self.assertIn("NetStream.Publish.BadName", str(failure.value))
        self.assertIn("already being published", str(failure.value))
        self.assertTrue(server2.transport.disconnecting)
        self.publish_gop(first, pump1, sid1)
        self.assertEqual(len(self.recordings.made["cam"].messages), 20)

    def test_bad_stream_name_refused(self):
        # Dots alone would name the archive's own directory or its parent.
        for name in ("../etc/passwd", "..", ".", ".hidden", "a" * 129, "a b"):
            client, server, pump, sid, d = start_publishing(self, self.h, name=name)
            self.assertIn("invalid stream name", str(self.failureResultOf(d, RTMPStatusError).value))
            self.assertEqual(self.h.hub.streams, {})

    def test_a_huge_stream_name_is_not_echoed_whole(self):
        logged: list[dict] = []
        from twisted.logger import ILogObserver, globalLogPublisher

        observer = cast(ILogObserver, logged.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        name = "x" * 5_000_000
        client, server, pump, sid, d = start_publishing(self, self.h, name=name)
        description = str(self.failureResultOf(d, RTMPStatusError).value)
        self.assertIn("invalid stream name", description)
        self.assertLess(len(description), 300)
        from twisted.logger import formatEvent

        self.assertLess(max(len(formatEvent(e)) for e in logged), 1000)

    def test_an_unexpected_error_closes_only_that_connection(self):
        first, _, pump, sid, d = start_publishing(self, self.h)
        self.successResultOf(d)
        client, server, other_pump = self.h.connect()

        def broken(data):
            raise ValueError("not an RTMPError")

        server.conn.receive = broken
        client.transport.write(b"anything")
        other_pump.flush()
        self.assertTrue(server._closed)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.publish_gop(first, pump, sid)
        self.assertIn("cam", self.h.hub.streams)

    def test_unsupported_codec_gets_an_error_status(self):
        client, server, pump, sid, d = start_publishing(self, self.h)
        self.successResultOf(d)
        client.send_media(sid, MediaMessage(VIDEO, 0, b"\x14\x00vp6 frame"))
        pump.flush()
        (status,) = [s for s in client.statuses if s.level == "error"]
        self.assertEqual(status.code, "NetStream.Failed")
        self.assertIn("unsupported video codec 'On2 VP6'", status.description)
        self.assertNotIn("cam", self.h.hub.streams)
        self.assertTrue(server.transport.disconnecting)

    def test_unknown_enhanced_fourcc_refused(self):
        client, server, pump, sid, d = start_publishing(self, self.h)
        client.send_media(sid, MediaMessage(VIDEO, 0, b"\x90xyz1\x00"))
        pump.flush()
        self.assertIn("'xyz1'", client.statuses[-1].description)

    def test_enhanced_hevc_accepted(self):
        client, server, pump, sid, d = start_publishing(self, self.h)
        client.send_media(sid, MediaMessage(VIDEO, 0, b"\x90hvc1\x01\x02"))
        client.send_media(sid, MediaMessage(VIDEO, 0, b"\x91hvc1\x00\x00\x00data"))
        pump.flush()
        self.assertEqual(self.h.hub.streams["cam"].video_codec, "hvc1")
        self.assertEqual(len(self.h.hub.streams["cam"].gop), 1)

    def hostile_connection(self, payload):
        """A raw connection that completes the handshake and sends ``payload``."""
        proto = self.h.accepted()
        transport = StringTransport()
        proto.makeConnection(transport)
        hs = ClientHandshake()
        proto.dataReceived(hs.bytes_to_send())
        hs.receive(transport.value())
        proto.dataReceived(hs.bytes_to_send() + payload)
        return transport

    def test_hostile_input_closes_only_that_connection(self):
        first, _, pump, sid, d = start_publishing(self, self.h)
        self.successResultOf(d)
        enc = ChunkEncoder()
        bomb = b"\x02\x00\x07connect\x00\x3f\xf0\x00\x00\x00\x00\x00\x00" + b"\x03\x00\x01a" * 5000
        hostile = [
            b"\x46" + bytes(7),  # type-1 header on a new chunk stream
            enc.encode(2, 0, SET_CHUNK_SIZE, 0, (10**9).to_bytes(4, "big")),
            ChunkEncoder().set_chunk_size(10**6) + b"\x06\x00\x00\x00\xff\xff\xff\x09\x01\x00\x00\x00",
            ChunkEncoder().encode(3, 0, 99, 0, b"unknown type"),
            ChunkEncoder().encode(3, 0, COMMAND_AMF0, 0, bomb),
            ChunkEncoder().encode(3, 0, COMMAND_AMF0, 0, command("connect", 1, {"app": "live"})[:-5]),
        ]
        for payload in hostile:
            transport = self.hostile_connection(payload)
            self.assertTrue(transport.disconnected, payload[:20])
        self.publish_gop(first, pump, sid)
        self.assertEqual(len(self.recordings.made["cam"].messages), 20)
        self.assertIn("cam", self.h.hub.streams)

    def test_handshake_timeout(self):
        proto = self.h.accepted()
        transport = StringTransport()
        proto.makeConnection(transport)
        self.h.clock.advance(11)
        self.assertTrue(transport.disconnected)

    def test_silent_publisher_is_dropped(self):
        client, server, pump, sid, d = start_publishing(self, self.h)
        self.h.clock.advance(29)
        pump.flush()
        self.assertIn("cam", self.h.hub.streams)
        self.h.clock.advance(2)
        pump.flush()
        self.assertNotIn("cam", self.h.hub.streams)

    def test_control_messages_are_rate_limited_by_the_reactor_s_clock(self):
        client, server, pump, sid, d = start_publishing(self, self.h)
        ping = ChunkEncoder().encode(2, 0, USER_CONTROL, 0, user_control(UC_PING_REQUEST, 1))
        self.h.clock.advance(10)  # the bucket refills to its burst
        client.transport.write(ping * CONTROL_BURST)
        pump.flush()
        self.h.clock.advance(1)  # and a second's worth more
        client.transport.write(ping * CONTROL_RATE)
        pump.flush()
        self.assertIn("cam", self.h.hub.streams)
        client.transport.write(ping)  # in no time at all: one too many
        pump.flush()
        self.assertNotIn("cam", self.h.hub.streams)
        self.assertTrue(server.transport.disconnecting)

    def test_connections_beyond_the_limit_are_refused(self):
        self.h.factory.settings.max_connections = 2
        first = self.h.accepted()
        first.makeConnection(StringTransport())
        second = self.h.accepted()
        second.makeConnection(StringTransport())
        self.assertIsNone(self.h.factory.buildProtocol(None))
        first.connectionLost()
        self.assertIsNotNone(self.h.factory.buildProtocol(None))

    def test_one_address_cannot_hold_every_connection(self):
        from twisted.internet.address import IPv4Address

        self.h.factory.settings.max_connections = 10
        self.h.factory.settings.max_connections_per_address = 3

        def connect(host):
            address = IPv4Address("TCP", host, 40000)
            proto = self.h.factory.buildProtocol(address)
            if proto is not None:
                proto.makeConnection(StringTransport(peerAddress=address))
            return proto

        hog = [connect("203.0.113.9") for _ in range(3)]
        self.assertIsNone(connect("203.0.113.9"))
        broadcaster = connect("198.51.100.7")  # another address still gets in
        self.assertIsNotNone(broadcaster)
        hog[0].connectionLost()
        self.assertIsNotNone(connect("203.0.113.9"))
        for proto in (*hog[1:], broadcaster):
            proto.connectionLost()
        self.assertEqual(self.h.factory.by_address, {"203.0.113.9": 1})

    def test_a_consumer_can_stop_the_publisher_with_a_reason(self):
        client, server, pump, sid, d = start_publishing(self, self.h)
        self.h.hub.streams["cam"].publisher.stop("video codec 'hvc1' cannot be transcoded")
        pump.flush()
        self.assertEqual(client.statuses[-1].code, "NetStream.Failed")
        self.assertIn("hvc1", client.statuses[-1].description)
        self.assertNotIn("cam", self.h.hub.streams)
        self.assertTrue(server.transport.disconnecting)

    def test_wrong_app_refused(self):
        self.h.factory.settings.app = "other"
        client, server, pump = self.h.connect()
        self.failureResultOf(client.ready, RTMPStatusError)


class PlayTests(SynchronousTestCase):
    def setUp(self):
        self.h = Harness(player_queue_bytes=100_000)
        self.pub, _, self.pump, self.sid, d = start_publishing(self, self.h)
        for msg in (METADATA, AVC_HEADER, AAC_HEADER, keyframe(0), aac(0), interframe(33), keyframe(66), interframe(99)):
            self.pub.send_media(self.sid, msg)
        self.pump.flush()

    def play(self, name="cam"):
        got: list[MediaMessage] = []
        client, server, pump = self.h.connect(on_media=got.append)
        d = client.create_stream()
        pump.flush()
        d = client.play(self.successResultOf(d), name)
        pump.flush()
        return client, server, pump, d, got

    def test_late_player_starts_on_the_last_keyframe(self):
        client, server, pump, d, got = self.play()
        self.assertEqual(self.successResultOf(d).code, "NetStream.Play.Reset")
        # |RtmpSampleAccess, metadata, the two headers, then the GOP from keyframe 66.
        self.assertEqual(amf0.decode_all(got[0].payload)[0], "|RtmpSampleAccess")
        self.assertEqual(amf0.decode_all(got[1].payload)[0], "onMetaData")
        self.assertEqual(got[2:], [AVC_HEADER, AAC_HEADER, keyframe(66), interframe(99)])
        self.pub.send_media(self.sid, interframe(132))
        self.pump.flush()
        pump.flush()
        self.assertEqual(got[-1], interframe(132))

    def test_unknown_stream(self):
        client, server, pump, d, got = self.play("nope")
        self.assertIn("StreamNotFound", str(self.failureResultOf(d, RTMPStatusError).value))

    def test_player_told_when_the_publisher_leaves(self):
        client, server, pump, d, got = self.play()
        self.pub.transport.loseConnection()
        self.pump.flush()
        pump.flush()
        self.assertEqual(client.statuses[-1].code, "NetStream.Play.UnpublishNotify")

    def test_slow_player_is_dropped_and_the_publisher_goes_on(self):
        fast, _, fast_pump, _, fast_got = self.play()
        slow, server, pump, d, got = self.play()
        pump.flush()
        server.pauseProducing()  # the transport's buffer is full
        for i in range(40):
            self.pub.send_media(self.sid, interframe(132 + 33 * i, size=5000))
        self.pump.flush()
        fast_pump.flush()
        self.assertTrue(server.transport.disconnecting)
        self.assertEqual(len(self.h.hub.streams["cam"].players), 1)
        self.assertEqual(fast_got[-1], interframe(132 + 33 * 39, size=5000))

    def test_paused_player_catches_up_when_resumed(self):
        client, server, pump, d, got = self.play()
        server.pauseProducing()
        for i in range(5):
            self.pub.send_media(self.sid, interframe(132 + 33 * i))
        self.pump.flush()
        pump.flush()
        before = len(got)
        server.resumeProducing()
        pump.flush()
        self.assertEqual(len(got), before + 5)


class ConnectRateTests(SynchronousTestCase):
    def test_one_address_opening_connections_fast_is_refused_others_are_not(self):
        from twisted.internet.address import IPv4Address

        h = Harness(connects_per_second_per_address=5.0)

        def connect(host):
            return h.factory.buildProtocol(IPv4Address("TCP", host, 40000))

        made = [connect("203.0.113.9") for _ in range(30)]
        self.assertEqual(sum(p is not None for p in made), 10)  # a burst of twice the rate
        self.assertIsNotNone(connect("198.51.100.7"))
        h.clock.advance(1)
        self.assertEqual(sum(connect("203.0.113.9") is not None for _ in range(10)), 5)
