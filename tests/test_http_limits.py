"""
What every role's HTTP listener refuses before any resource sees it: a
request body longer than a few KB, said or sent (twisted.web would spool it
to a temporary file before authentication or routing).
"""

from __future__ import annotations

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from fbstream.roles.services import BoundedRequest


class Echo(Resource):
    isLeaf = True

    def render_POST(self, request):
        return b"got %d bytes" % (len(request.content.read()),)


class BodyLimits(SynchronousTestCase):
    def connect(self):
        site = Site(Echo())
        site.requestFactory = BoundedRequest
        channel = site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        return channel, transport

    def test_a_small_body_is_read(self):
        channel, transport = self.connect()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        self.assertIn(b"got 5 bytes", transport.value())

    def test_a_body_said_to_be_huge_is_refused_before_it_is_read(self):
        channel, transport = self.connect()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "), transport.value())
        self.assertTrue(transport.disconnecting)
        channel.dataReceived(b"x" * 100_000)  # what the client sends anyway goes nowhere
        self.assertNotIn(b"got", transport.value())

    def test_a_chunked_body_is_cut_off_at_the_limit(self):
        channel, transport = self.connect()
        chunk = b"x" * 40_000
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            channel.dataReceived(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "), transport.value()[:100])
        self.assertNotIn(b"got", transport.value())
