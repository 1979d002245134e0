"""Helpers shared by the RTMP unit tests: a hub and protocols over iosim."""

from twisted.internet.task import Clock
from twisted.test.iosim import connectedServerAndClient

from fbstream.live.hub import StreamHub
from fbstream.live.rtmp import RTMPClientProtocol, RTMPServerFactory, RTMPServerProtocol, RTMPServerSettings
from fbstream.media import MediaMessage
from fbstream.rtmp import amf0
from fbstream.rtmp.messages import AUDIO, DATA_AMF0, VIDEO

METADATA = MediaMessage(
    DATA_AMF0, 0, amf0.encode("@setDataFrame", "onMetaData", amf0.ECMAArray({"width": 640.0, "height": 360.0}))
)
AVC_HEADER = MediaMessage(VIDEO, 0, b"\x17\x00\x00\x00\x00\x01\x64\x00\x1f\xff")
AAC_HEADER = MediaMessage(AUDIO, 0, b"\xaf\x00\x11\x90")


def keyframe(ts, size=2000):
    return MediaMessage(VIDEO, ts, b"\x17\x01\x00\x00\x00" + bytes(size))


def interframe(ts, size=500):
    return MediaMessage(VIDEO, ts, b"\x27\x01\x00\x00\x00" + bytes(size))


def aac(ts):
    return MediaMessage(AUDIO, ts, b"\xaf\x01" + bytes(200))


class Harness:
    def __init__(self, **settings):
        self.clock = Clock()
        self.hub = StreamHub("test")
        self.factory = RTMPServerFactory(self.hub, self.clock, RTMPServerSettings(**settings))

    def accepted(self) -> RTMPServerProtocol:
        """A server protocol for one more connection, which the factory must accept."""
        protocol = self.factory.buildProtocol(None)
        assert protocol is not None, "the factory refused the connection"
        return protocol

    def connect(self, on_media=None):
        """A client protocol connected to a new server protocol over iosim."""
        client, server, pump = connectedServerAndClient(
            lambda: self.factory.buildProtocol(None),
            lambda: RTMPClientProtocol("live", "rtmp://127.0.0.1/live", self.clock, on_media),
            clock=self.clock,
        )
        pump.flush()
        return client, server, pump


def start_publishing(case, harness, name="cam"):
    client, server, pump = harness.connect()
    case.successResultOf(client.ready)
    d = client.create_stream()
    pump.flush()
    sid = case.successResultOf(d)
    d = client.publish(sid, name)
    pump.flush()
    return client, server, pump, sid, d
