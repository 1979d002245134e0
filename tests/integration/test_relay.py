"""The relay's bounds: a next hop that stops reading pauses the broadcaster, and nothing is lost."""

from __future__ import annotations

import os

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from fbstream.config import load
from fbstream.live.rtmp import RTMPClientProtocol
from fbstream.media import MediaMessage
from fbstream.metrics import RELAY_PAUSES
from fbstream.roles.build import build_role

from .conftest import ROLES_REACTOR, ROOT, eventually, free_port, sleep, start_role

HEADER = b"\x17\x00\x00\x00\x00\x01\x42\xc0\x1e\xff\xe1\x00\x00\x01\x00\x00"
MESSAGES = 150
SIZE = 100_000


@pytest_twisted.inlineCallbacks
def test_a_slow_next_hop_pauses_the_broadcaster(tmp_path):
    sink_rtmp, dc_rtmp = free_port(), free_port()
    sink = start_role("pop", ["rtmp.listen=tcp:%d:interface=127.0.0.1" % (sink_rtmp,),
                              "http.listen=tcp:%d:interface=127.0.0.1" % (free_port(),),
                              "pop.cache_listen=[]"], sink_rtmp, None, 0, tmp_path)
    cfg = load("dc-proxy", os.path.join(ROOT, "conf", "dc-proxy.toml"), [
        "rtmp.listen=tcp:%d:interface=127.0.0.1" % (dc_rtmp,),
        "http.listen=tcp:%d:interface=127.0.0.1" % (free_port(),),
        "relay.encoders=tcp:127.0.0.1:%d" % (sink_rtmp,)])["dc-proxy"]
    dc = build_role(cfg, ROLES_REACTOR)
    dc.startService()
    pauses = RELAY_PAUSES.labels(role="dc-proxy")
    before = pauses._value.get()
    pub = RTMPClientProtocol("live", "rtmp://127.0.0.1/live", reactor)
    try:
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", dc_rtmp), pub)
        yield pub.ready
        sid = yield pub.create_stream()
        yield pub.publish(sid, "slow")
        pub.send_media(sid, MediaMessage(9, 0, HEADER))
        yield eventually(lambda: "slow" in sink.hub.streams, 20, what="the stream at the sink")
        stream = sink.hub.streams["slow"]
        # The sink stops reading what the dc-proxy relays to it.
        sink_side = stream.publisher.proto.transport
        sink_side.pauseProducing()
        payload = b"\x17\x01\x00\x00\x00" + os.urandom(SIZE)
        for i in range(MESSAGES):
            pub.send_media(sid, MediaMessage(9, 33 * (i + 1), payload))
            if i % 10 == 0:
                yield sleep(0)
        # The dc-proxy's buffer toward the sink filled: it paused reading us.
        yield eventually(lambda: pauses._value.get() > before, 20, what="a relay pause")
        yield sleep(1)
        assert stream.counts[9] < MESSAGES, "the sink was not reading, yet got everything"
        # The sink reads again: every message arrives, in order, none dropped.
        sink_side.resumeProducing()
        yield eventually(lambda: stream.counts[9] == MESSAGES + 1, 30,
                     what=lambda: "every message at the sink (%r)" % (stream.counts,))
    finally:
        pub.transport.loseConnection()
        yield defer.maybeDeferred(dc.stopService)
        yield defer.maybeDeferred(sink.service.stopService)
