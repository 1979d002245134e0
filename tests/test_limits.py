"""
A listener's limits, on a Clock: connections per listener and per client
address, and the deadline for a whole HTTP request head that a trickle of
bytes does not extend (slowloris).
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from fbstream.limits import ConnectionLimits


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello"


class Limits(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.factory = ConnectionLimits(Site(Hello()), self.clock, "test", max_connections=5,
                                        max_per_address=2, head_timeout=10.0)

    def connect(self, host="192.0.2.1"):
        address = IPv4Address("TCP", host, 50000)
        proto = self.factory.buildProtocol(address)
        if proto is None:
            return None, None
        transport = StringTransport(peerAddress=address)
        proto.makeConnection(transport)
        return proto, transport

    def test_connections_per_address_and_per_listener(self) -> None:
        a1, _ = self.connect("192.0.2.1")
        self.connect("192.0.2.1")
        self.assertEqual(self.connect("192.0.2.1"), (None, None))  # a third from one address
        for host in ("192.0.2.2", "192.0.2.3", "192.0.2.3"):
            self.assertIsNotNone(self.connect(host)[0])
        self.assertEqual(self.connect("192.0.2.4"), (None, None))  # five open in all
        a1.connectionLost(None)
        self.assertIsNotNone(self.connect("192.0.2.4")[0])
        self.assertEqual(self.factory.by_address, {"192.0.2.1": 1, "192.0.2.2": 1, "192.0.2.3": 2, "192.0.2.4": 1})

    def test_a_head_sent_a_byte_at_a_time_is_cut_off(self) -> None:
        proto, transport = self.connect()
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 100:
            self.clock.advance(1)  # a byte a second: every byte would reset an idle timeout
            if transport.disconnected:
                break
            proto.dataReceived(bytes([byte]))
        self.assertTrue(transport.disconnected)
        self.assertLessEqual(self.clock.seconds(), 11)

    def test_heads_in_time_are_served_on_one_connection(self) -> None:
        proto, transport = self.connect()
        for _ in range(3):
            proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n")
            self.clock.advance(5)
            proto.dataReceived(b"\r\n")
            self.clock.advance(20)  # idle between requests: not this deadline's business
        self.assertFalse(transport.disconnected)
        self.assertEqual(transport.value().count(b"hello"), 3)

    def test_the_next_head_on_a_kept_connection_has_its_own_deadline(self) -> None:
        proto, transport = self.connect()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(30)
        proto.dataReceived(b"GET / HT")
        self.clock.advance(11)
        self.assertTrue(transport.disconnected)
