"""
The growing-body producer, on requests whose transport fills and drains
when the test says (as a socket's does when its client reads or not), with
a Clock: back-pressure, late joiners, many viewers on one body, a client
that goes away, a body cut short, and a viewer that stops reading for good.
The last tests put it behind twisted.web's own HTTP channel.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import server
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer
from zope.interface.verify import verifyObject

from fbstream.httpbody import MAX_WRITE, BodyProducer, IGrowingBody, Outcome
from tests.web_helpers import Request


@implementer(IGrowingBody)
class Body:
    """A body that grows when the test says."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)
        self.complete = False


class Client(Request):
    """
    A request whose transport takes writes until it holds more than
    ``window`` bytes the client has not read, then pauses its producer on
    each further write (as twisted.internet's transports do), and resumes
    it once the client has read everything (:meth:`read`).
    """

    def __init__(self, window: int = 1 << 30) -> None:
        super().__init__([b"x"])
        self.window = window
        self.unread = 0
        self.most_unread = 0

    def write(self, data: bytes) -> None:
        super().write(data)
        self.unread += len(data)
        self.most_unread = max(self.most_unread, self.unread)
        if self.producer is not None and self.unread > self.window:
            self.producer.pauseProducing()

    def read(self) -> None:
        """The client reads everything sent so far: the transport drains and resumes its producer."""
        self.unread = 0
        if self.producer is not None:
            self.producer.resumeProducing()

    def leave(self) -> None:
        """The client goes away, told as Twisted tells it: stopProducing, then notifyFinish's errback."""
        self._disconnected = True
        if self.producer is not None:
            self.producer.stopProducing()
        super().leave()


class Owner:
    """What an owner learns: each producer's end, once."""

    def __init__(self) -> None:
        self.ended: list[tuple[BodyProducer, Outcome]] = []

    def __call__(self, producer: BodyProducer, outcome: Outcome) -> None:
        self.ended.append((producer, outcome))


class Streaming(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.owner = Owner()

    def stream(self, body: Body, client: Client | None = None, **kwargs) -> tuple[Client, BodyProducer]:
        client = client if client is not None else Client()
        # The double stands in for twisted.web's Request, which BodyProducer is typed by.
        producer = BodyProducer(cast(server.Request, client), body, self.owner, clock=self.clock, **kwargs)
        producer.start()
        return client, producer

    def test_it_is_a_push_producer_of_a_growing_body(self) -> None:
        body = Body()
        client, producer = self.stream(body)
        self.assertTrue(verifyObject(IGrowingBody, body))
        self.assertIs(client.producer, producer)
        self.assertTrue(client.streaming)

    def test_what_is_there_then_each_chunk_as_it_comes_then_the_end(self) -> None:
        body = Body(b"one", b"two")
        client, producer = self.stream(body)
        self.assertEqual(client.written, [b"one", b"two"])
        body.chunks.append(b"three")
        producer.more()
        self.assertEqual(client.written, [b"one", b"two", b"three"])
        self.assertFalse(client.finished)
        body.complete = True
        producer.more()
        self.assertEqual(client.finished, 1)
        self.assertIsNone(client.producer)  # unregistered before finishing
        self.assertEqual(self.owner.ended, [(producer, Outcome.COMPLETE)])
        self.assertEqual(producer.written, len(b"onetwothree"))
        # Anything said afterwards is ignored.
        producer.more()
        producer.resumeProducing()
        producer.stopProducing()
        self.assertEqual((client.finished, len(self.owner.ended)), (1, 1))

    def test_a_complete_body_is_written_and_finished_at_once(self) -> None:
        body = Body(b"all", b"of it")
        body.complete = True
        sent: list[int] = []
        client, producer = self.stream(body, sent=sent.append)
        self.assertEqual((client.body(), client.finished), (b"allof it", 1))
        self.assertEqual(sent, [3, 5])
        self.assertEqual(producer.outcome, Outcome.COMPLETE)

    def test_an_empty_complete_body_finishes(self) -> None:
        body = Body(b"")
        body.complete = True
        client, _ = self.stream(body)
        self.assertEqual((client.written, client.finished), ([], 1))

    def test_a_full_transport_pauses_it_and_it_resumes_where_it_was(self) -> None:
        body = Body(*[b"%d" % (i,) * 100 for i in range(10)])
        client, producer = self.stream(body, Client(window=250))
        # Three writes of 100 fill a 250-byte window: paused, nothing more.
        self.assertEqual(len(client.written), 3)
        self.assertTrue(producer.paused)
        body.chunks.append(b"x" * 100)
        body.complete = True
        producer.more()
        self.assertEqual(len(client.written), 3)
        while not client.finished:
            client.read()
        self.assertEqual(client.body(), b"".join(body.chunks))
        self.assertEqual(producer.pauses, 3)  # after 3, 6 and 9 of the 11 chunks
        self.assertLessEqual(client.most_unread, 300)
        self.assertEqual(self.owner.ended, [(producer, Outcome.COMPLETE)])

    def test_a_large_chunk_is_written_in_bounded_pieces(self) -> None:
        big = bytes(range(256)) * 4096  # 1 MiB, one chunk (as a cache stores an object)
        body = Body(big)
        body.complete = True
        client, producer = self.stream(body, Client(window=64 * 1024))
        self.assertEqual(len(client.written), 2)
        while not client.finished:
            client.read()
        self.assertEqual(client.body(), big)
        self.assertTrue(all(len(piece) <= MAX_WRITE for piece in client.written))
        # What the transport ever held: its window and one write.
        self.assertLessEqual(client.most_unread, 64 * 1024 + MAX_WRITE)

    def test_the_client_going_away_stops_it_and_tells_the_owner_once(self) -> None:
        body = Body(b"a")
        client, producer = self.stream(body)
        client.leave()
        self.assertEqual(self.owner.ended, [(producer, Outcome.GONE)])
        body.chunks.append(b"b")
        body.complete = True
        producer.more()
        self.assertEqual((client.written, client.finished, client.aborted), ([b"a"], 0, False))

    def test_notify_finish_alone_says_the_client_is_gone(self) -> None:
        body = Body(b"a")
        client, producer = self.stream(body)
        client._disconnected = True
        client.processingFailed(Failure(ConnectionDone()))
        self.assertEqual(self.owner.ended, [(producer, Outcome.GONE)])

    def test_a_body_that_completes_after_its_client_is_lost_is_not_finished(self) -> None:
        body = Body(b"a")
        client, producer = self.stream(body)
        client._disconnected = True  # lost, and Twisted has not said so yet
        body.complete = True
        producer.more()
        self.assertEqual((client.finished, producer.outcome), (0, Outcome.GONE))

    def test_a_body_that_will_never_complete_is_cut_short(self) -> None:
        body = Body(b"a")
        client, producer = self.stream(body, Client(window=0), stall_timeout=30.0)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # paused: its stall timer runs
        producer.abort()
        self.assertTrue(client.aborted)
        self.assertFalse(client.finished)
        self.assertIsNone(client.producer)
        self.assertEqual(self.owner.ended, [(producer, Outcome.ABORTED)])
        self.assertEqual(self.clock.getDelayedCalls(), [])  # its stall timer went with it

    def test_many_viewers_share_one_body_and_a_slow_one_holds_up_no_one(self) -> None:
        body = Body()
        slow, slow_producer = self.stream(body, Client(window=0), stall_timeout=30.0)
        viewers, producers = [], [slow_producer]
        for n in range(200):
            # They join as it grows: each gets what is there, then the rest.
            viewer, producer = self.stream(body)
            viewers.append(viewer)
            producers.append(producer)
            body.chunks.append(b"%d," % (n,))
            for producer in producers:
                producer.more()
        body.complete = True
        for producer in producers:
            producer.more()
        whole = b"".join(body.chunks)
        for viewer in viewers:
            self.assertEqual((viewer.body(), viewer.finished), (whole, 1))
            # What each was sent is the shared chunks themselves: no copies.
            self.assertTrue(all(a is b for a, b in zip(viewer.written, body.chunks)))
        self.assertEqual(len(slow.written), 1)  # paused after its first write
        self.assertTrue(slow_producer.paused)
        self.assertEqual([o for _, o in self.owner.ended], [Outcome.COMPLETE] * 200)
        while not slow.finished:
            slow.read()
        self.assertEqual(slow.body(), whole)

    def test_a_viewer_paused_for_good_costs_its_window_and_is_dropped(self) -> None:
        body = Body(b"x" * 1000)
        client, producer = self.stream(body, Client(window=1000), stall_timeout=30.0)
        body.chunks.append(b"y" * 1000)
        producer.more()
        self.assertTrue(producer.paused)
        # The body grows to 10 MB meanwhile: the paused viewer is sent none of it.
        for _ in range(10_000):
            body.chunks.append(b"z" * 1000)
            producer.more()
        self.assertEqual((len(client.written), client.most_unread), (2, 2000))
        self.clock.advance(29.9)
        self.assertEqual(self.owner.ended, [])
        self.clock.advance(0.1)
        self.assertEqual(self.owner.ended, [(producer, Outcome.STALLED)])
        self.assertTrue(client.aborted)
        self.assertFalse(client.finished)
        self.assertIsNone(client.producer)
        client.leave()  # the abort's connectionLost: told once only
        self.assertEqual(len(self.owner.ended), 1)

    def test_without_a_stall_bound_a_paused_viewer_waits_sending_nothing(self) -> None:
        body = Body(b"x" * 1000, b"y" * 1000)
        client, producer = self.stream(body, Client(window=500))
        for _ in range(100):
            body.chunks.append(b"z" * 1000)
            producer.more()
        self.clock.advance(3600)
        self.assertEqual((len(client.written), producer.outcome), (1, None))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reading_again_restarts_the_stall_bound(self) -> None:
        body = Body(*[b"x" * 100] * 50)
        client, producer = self.stream(body, Client(window=100), stall_timeout=30.0)
        for _ in range(5):
            self.clock.advance(20)
            client.read()  # writes 200 bytes and is paused again: a new 30 s
        self.assertIsNone(producer.outcome)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(30)
        self.assertEqual(producer.outcome, Outcome.STALLED)

    def test_repeated_pauses_keep_one_timer(self) -> None:
        body = Body(b"a")
        _, producer = self.stream(body, stall_timeout=5.0)
        producer.pauseProducing()
        producer.pauseProducing()
        self.assertEqual((len(self.clock.getDelayedCalls()), producer.pauses), (1, 1))


class Socket(StringTransport):
    """
    As a socket's transport: pauses its producer (the HTTP channel) on each
    write while more than ``limit`` bytes are unread, and resumes it once
    the client has read them.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.received = b""
        self.most = 0

    def write(self, data: bytes) -> None:
        super().write(data)
        self._maybe_pause()

    def writeSequence(self, data) -> None:
        super().writeSequence(data)
        self._maybe_pause()

    def _maybe_pause(self) -> None:
        self.most = max(self.most, len(self.value()))
        if self.producer is not None and len(self.value()) > self.limit:
            self.producer.pauseProducing()

    def read(self) -> None:
        self.received += self.value()
        self.clear()
        if self.producer is not None:
            self.producer.resumeProducing()


class Growing(Resource):
    """Streams ``body`` to every request, with its length once it is complete."""

    isLeaf = True

    def __init__(self, body: Body) -> None:
        super().__init__()
        self.body = body
        self.producers: list[BodyProducer] = []
        self.ended: list[Outcome] = []

    def render_GET(self, request):
        if self.body.complete:
            request.setHeader(b"content-length", b"%d" % (sum(map(len, self.body.chunks)),))
        producer = BodyProducer(request, self.body, lambda _, outcome: self.ended.append(outcome))
        self.producers.append(producer)
        producer.start()
        return NOT_DONE_YET


def unchunk(data: bytes) -> tuple[bytes, bool]:
    """A chunked body's bytes, and whether it ended with its last chunk."""
    body = b""
    while data:
        size, _, data = data.partition(b"\r\n")
        if int(size, 16) == 0:
            return body, True
        body, data = body + data[: int(size, 16)], data[int(size, 16) + 2:]
    return body, False


class BehindTwistedWeb(SynchronousTestCase):
    """The producer behind twisted.web's HTTPChannel and Request, over a filling transport."""

    def connect(self, body: Body, limit: int = 4096) -> tuple[Growing, Socket, Protocol]:
        resource = Growing(body)
        channel = Site(resource, reactor=Clock()).buildProtocol(None)
        assert channel is not None
        transport = Socket(limit)
        channel.makeConnection(transport)
        return resource, transport, channel

    def test_the_channel_pauses_and_resumes_it_and_the_body_is_chunked(self) -> None:
        body = Body(*[bytes([i]) * 3000 for i in range(4)])
        resource, transport, channel = self.connect(body)
        channel.dataReceived(b"GET /s HTTP/1.1\r\nHost: test\r\n\r\n")
        producer = resource.producers[0]
        self.assertTrue(producer.paused)  # 6 kB unread past a 4 kB limit
        for i in range(4, 40):
            body.chunks.append(bytes([i]) * 3000)
            producer.more()
        body.complete = True
        producer.more()
        self.assertLess(transport.most, 4096 + 3000 + 1024)
        while resource.ended == []:
            transport.read()
        transport.read()
        head, _, rest = transport.received.partition(b"\r\n\r\n")
        self.assertIn(b"Transfer-Encoding: chunked", head)
        self.assertEqual(unchunk(rest), (b"".join(body.chunks), True))
        self.assertEqual(resource.ended, [Outcome.COMPLETE])

    def test_a_complete_body_goes_with_its_length(self) -> None:
        body = Body(b"a" * 5000, b"b" * 5000)
        body.complete = True
        resource, transport, channel = self.connect(body)
        channel.dataReceived(b"GET /s HTTP/1.1\r\nHost: test\r\n\r\n")
        while resource.ended == []:
            transport.read()
        transport.read()
        head, _, rest = transport.received.partition(b"\r\n\r\n")
        self.assertIn(b"Content-Length: 10000", head)
        self.assertEqual(rest, b"a" * 5000 + b"b" * 5000)

    def test_head_gets_the_headers_and_no_body(self) -> None:
        body = Body(b"a" * 5000)
        resource, transport, channel = self.connect(body)
        channel.dataReceived(b"HEAD /s HTTP/1.1\r\nHost: test\r\n\r\n")
        body.chunks.append(b"b" * 5000)
        body.complete = True
        resource.producers[0].more()
        transport.read()
        head, _, rest = transport.received.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "))
        self.assertEqual((rest, resource.ended), (b"", [Outcome.COMPLETE]))

    def test_a_lost_connection_stops_it(self) -> None:
        body = Body(b"a" * 5000, b"b" * 5000)
        resource, transport, channel = self.connect(body)
        channel.dataReceived(b"GET /s HTTP/1.1\r\nHost: test\r\n\r\n")
        # As a socket's transport does: stop its producer, then connectionLost.
        assert transport.producer is not None
        transport.producer.stopProducing()
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(resource.ended, [Outcome.GONE])
