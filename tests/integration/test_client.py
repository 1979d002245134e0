"""
Our own RTMP client (what PoP and dc-proxy relays will be made of) publishing
over a real socket, read back by a client we did not write (ffmpeg).
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from zope.interface import implementer

from fbstream.live.rtmp import RTMPClientProtocol
from fbstream.media import IConsumerFactory, IStreamConsumer
from fbstream.rtmp.messages import VIDEO

from .conftest import ffmpeg_play, pyav_counts, pyav_publish, sleep


@implementer(IStreamConsumer)
class Forward:
    def __init__(self, client, stream_id, name):
        self.client = client
        self.stream_id = stream_id
        self.name = name

    def media(self, message):
        self.client.send_media(self.stream_id, message)

    def ended(self, reason):
        self.client.unpublish(self.stream_id, self.name)


@implementer(IConsumerFactory)
class RelayTo:
    def __init__(self, source, client, stream_id, name):
        self.source = source
        self.forward = Forward(client, stream_id, name)

    def consumer_for(self, stream):
        return self.forward if stream.name == self.source else None


@pytest_twisted.inlineCallbacks
def test_our_client_publishes_what_ffmpeg_plays(pop, tmp_path):
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", pop.rtmp_port)
    client = yield connectProtocol(
        endpoint, RTMPClientProtocol("live", "rtmp://127.0.0.1:%d/live" % (pop.rtmp_port,), reactor)
    )
    yield client.ready
    stream_id = yield client.create_stream()
    status = yield client.publish(stream_id, "copy")
    assert status.code == "NetStream.Publish.Start"
    pop.hub.consumer_factories.append(RelayTo("src", client, stream_id, "copy"))

    publishing = pyav_publish(pop.url("src"), "--duration", "8", "--size", "640x360")
    src = yield pop.tallies.wait_for("src")
    copy = yield pop.tallies.wait_for("copy")
    yield sleep(2)
    packets = yield ffmpeg_play(pop.url("copy"), str(tmp_path / "copy.flv"))
    counts = pyav_counts((yield publishing))
    yield src.done
    yield copy.done
    # Message for message, the relayed stream is the published one.
    assert [(m.type_id, m.timestamp, m.payload) for m in copy.messages if m.type_id != 18] == [
        (m.type_id, m.timestamp, m.payload) for m in src.messages if m.type_id != 18
    ]
    assert len(copy.of_type(VIDEO)) >= counts["video_packets"]
    assert copy.stream.metadata_values["width"] == 640
    video = [p for p in packets if p[0] == "video"]
    assert len(video) >= 80 and video[0][2]
