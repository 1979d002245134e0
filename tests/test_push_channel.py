"""
The push channel's Twisted side on a Clock: a hub and its publisher
protocols, push clients and their subscriber protocols, joined by
StringTransports the test pumps (and can stop pumping, as a peer that stops
reading), and a real cache engine taking pushed answers in.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from fbstream.cache.engine import CacheSettings, CachingResource, _Held
from fbstream.cache.push import CachePushSink, RelaySource
from fbstream.httpbody import IGrowingBody
from fbstream.push import metrics as pm
from fbstream.push.channel import Offer, PushClient, PushHub, whole
from fbstream.push.core import ChannelSettings
from tests.test_cache_engine import GROWING, Streamed, Upstream, Viewer

SEG = b"/live/cam/720p/7.m4s"
MPD = b"/live/cam/manifest.mpd"
MPD_HEADERS = [(b"content-type", b"application/dash+xml"), (b"cache-control", b"public, max-age=1")]
SEG_HEADERS = [(b"content-type", b"video/mp4"), (b"cache-control", b"no-store"), (b"x-fbstream-segment", b"growing")]


class Growing:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.complete = False


IGrowingBody.implementedBy(Growing)  # shaped as one; the hub only reads chunks and complete


def segment_offer(body: Any, path: bytes = SEG) -> Offer:
    return Offer("cam", path, 200, SEG_HEADERS, body, latest_wins=False, made=0.0)


class Source:
    """A push source the test drives."""

    def __init__(self) -> None:
        self.wanted_streams: list[str] = []
        self.unwanted_streams: list[str] = []
        self.offers: list[Offer] = []

    def wanted(self, stream: str) -> None:
        self.wanted_streams.append(stream)

    def unwanted(self, stream: str) -> None:
        self.unwanted_streams.append(stream)

    def current(self, stream: str) -> list[Offer]:
        return list(self.offers)


class Sink:
    """Pushed answers, recorded."""

    def __init__(self, refuse: bool = False) -> None:
        self.bodies: dict[bytes, list[bytes]] = {}
        self.ended: list[bytes] = []
        self.failed: list[bytes] = []
        self.refuse = refuse
        self.stopped_streams: list[str] = []

    def stopped(self, stream: str) -> None:
        self.stopped_streams.append(stream)

    def pushed(self, stream: str, path: bytes, code: int, headers: list[tuple[bytes, bytes]]) -> Any:
        if self.refuse:
            return None
        sink = self
        sink.bodies[path] = []

        class Target:
            def data(self, data: bytes) -> None:
                sink.bodies[path].append(data)

            def end(self) -> None:
                sink.ended.append(path)

            def fail(self) -> None:
                sink.failed.append(path)

        return Target()


class Link:
    """A connection between a subscriber's and a publisher's protocol, pumped by the test."""

    def __init__(self, client_protocol: Any, server_protocol: Any) -> None:
        self.client, self.server = client_protocol, server_protocol
        self.client_transport, self.server_transport = StringTransport(), StringTransport()
        self.reading = True  # the subscriber reads what the publisher sends
        server_protocol.makeConnection(self.server_transport)
        client_protocol.makeConnection(self.client_transport)

    def pump(self) -> None:
        for _ in range(1000):
            up = self.client_transport.value()
            self.client_transport.clear()
            down = self.server_transport.value() if self.reading else b""
            if self.reading:
                self.server_transport.clear()
            if up:
                self.server.dataReceived(up)
            if down:
                self.client.dataReceived(down)
            if not up and not down:
                return

    def close(self) -> None:
        self.client.connectionLost(Failure(ConnectionRefusedError("gone")))
        self.server.connectionLost(Failure(ConnectionRefusedError("gone")))


class Connector:
    """Connects a PushClient to a hub through a Link, or refuses while ``down``."""

    def __init__(self, hub: PushHub) -> None:
        self.hub = hub
        self.down = False
        self.links: list[Link] = []
        self.attempts = 0

    def connect(self, factory: Any) -> Deferred:
        self.attempts += 1
        if self.down:
            return fail(ConnectionRefusedError())
        client = factory.buildProtocol(None)
        server = self.hub.factory().buildProtocol(None)
        link = Link(client, server)
        self.links.append(link)
        return succeed(client)

    @property
    def link(self) -> Link:
        return self.links[-1]


class ChannelCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.settings = ChannelSettings(ping_interval=1.0, ping_timeout=3.0, max_pushes=8)
        self.hub = PushHub("origin", self.clock, self.settings, b"0123456789abcdef", stall_timeout=5.0)
        self.source = Source()
        self.hub.source = self.source
        self.connector = Connector(self.hub)

    def client(self, sink: Any = None, idle: float = 30.0, secret: bytes = b"0123456789abcdef") -> PushClient:
        client = PushClient("pop-cache", self.clock, self.connector, "test", self.settings, secret,
                            sink if sink is not None else Sink(), idle_timeout=idle)
        client.start()
        self.addCleanup(client.stop)
        return client

    def subscribed(self, sink: Any = None, **kw: Any) -> PushClient:
        client = self.client(sink, **kw)
        client.want("cam")
        self.connector.link.pump()
        return client


class HubTests(ChannelCase):
    def test_a_subscription_reaches_the_source_and_gets_what_is_current(self) -> None:
        self.source.offers = [whole("cam", MPD, 200, MPD_HEADERS, b"<MPD v1/>", latest_wins=True, made=0.0)]
        sink = Sink()
        client = self.subscribed(sink)
        self.assertEqual(self.source.wanted_streams, ["cam"])
        self.assertTrue(client.pushing("cam"))
        self.assertEqual(b"".join(sink.bodies[MPD]), b"<MPD v1/>")
        self.assertEqual(sink.ended, [MPD])

    def pushing_a_segment(self) -> tuple[Sink, Growing, Offer]:
        """A subscriber, and a segment pushed to it with its first chunk."""
        sink = Sink()
        self.subscribed(sink)
        body = Growing()
        body.chunks.append(b"moof1")
        offer = segment_offer(body)
        self.hub.offer(offer)
        self.connector.link.pump()
        return sink, body, offer

    def test_a_growing_body_is_pushed_as_it_grows_and_ended_when_complete(self) -> None:
        sink, body, offer = self.pushing_a_segment()
        self.assertEqual(sink.bodies[SEG], [b"moof1"])
        body.chunks.append(b"moof2")
        offer.grew()
        self.connector.link.pump()
        self.assertEqual(sink.ended, [])
        body.complete = True
        offer.grew()
        self.connector.link.pump()
        self.assertEqual(b"".join(sink.bodies[SEG]), b"moof1moof2")
        self.assertEqual(sink.ended, [SEG])

    def test_a_failed_body_resets_its_push(self) -> None:
        sink, _, offer = self.pushing_a_segment()
        offer.fail()
        self.connector.link.pump()
        self.assertEqual(sink.failed, [SEG])

    def test_the_wrong_secret_gets_no_subscription(self) -> None:
        client = self.client(secret=b"not the secret!!")
        client.want("cam")
        self.connector.link.pump()
        self.assertFalse(client.pushing("cam"))
        self.assertEqual(self.source.wanted_streams, [])

    def test_for_manifests_the_latest_version_wins_while_a_subscriber_cannot_take_them(self) -> None:
        sink = Sink()
        self.subscribed(sink)
        server = self.connector.link.server
        server.pauseProducing()  # its transport is full
        for version in (b"v1", b"v2", b"v3"):
            self.hub.offer(whole("cam", MPD, 200, MPD_HEADERS, version, latest_wins=True, made=0.0))
        server.resumeProducing()
        self.connector.link.pump()
        self.assertEqual(sink.bodies, {MPD: [b"v3"]})

    def test_a_subscriber_that_stops_reading_loses_its_pushes_and_delays_no_other(self) -> None:
        slow_sink, fast_sink = Sink(), Sink()
        self.subscribed(slow_sink)
        slow = self.connector.link
        self.subscribed(fast_sink)
        fast = self.connector.link
        slow.reading = False
        slow.server.pauseProducing()
        dropped = pm.DROPPED.labels(tier="origin")._value.get()
        body = Growing()
        body.chunks.append(b"x" * 1000)
        offer = segment_offer(body)
        self.hub.offer(offer)
        fast.pump()
        self.assertEqual(fast_sink.bodies[SEG], [b"x" * 1000])
        for n in range(self.settings.max_pushes + 3):
            self.hub.offer(whole("cam", b"/live/cam/720p/%d.m4s" % (100 + n,), 200, SEG_HEADERS, b"y" * 100,
                                 latest_wins=False, made=0.0))
            fast.pump()
        # The slow one's queue is bounded: past it, pushes are dropped.
        self.assertEqual(len(slow.server.waiting_media), self.settings.max_pushes)
        self.assertGreaterEqual(pm.DROPPED.labels(tier="origin")._value.get() - dropped, 3)
        self.assertEqual(len(fast_sink.bodies), self.settings.max_pushes + 4)

    def test_a_subscriber_that_reads_nothing_is_let_go_buffers_and_all(self) -> None:
        self.subscribed()
        link = self.connector.link
        link.reading = False  # nor does it answer our pings
        while not link.server_transport.disconnecting:
            self.clock.advance(0.5)
            link.pump()
        # Its subscriptions end with the ping timeout; the goodbye waits in
        # its transport, behind whatever it has not read, for a while.
        self.assertEqual(self.hub.subscribers, {})
        self.assertEqual(self.hub.connections, {link.server})
        self.clock.advance(self.settings.ping_timeout - 0.1)
        self.assertFalse(link.server_transport.disconnected)
        # No longer: a peer that reads nothing would keep it for ever.
        self.clock.advance(0.2)
        self.assertTrue(link.server_transport.disconnected)
        link.server.connectionLost(Failure(ConnectionRefusedError("aborted")))
        self.assertEqual(self.hub.connections, set())

    def test_a_connection_that_closes_in_time_is_not_cut(self) -> None:
        self.settings = ChannelSettings(last_stream_id=4)
        self.hub.settings = self.settings
        self.subscribed()
        link = self.connector.link
        while not link.server_transport.disconnecting:  # our GOAWAY: the stream ids ran out
            self.hub.offer(whole("cam", MPD, 200, MPD_HEADERS, b"v", latest_wins=False, made=0.0))
            link.pump()
        link.server.connectionLost(Failure(ConnectionRefusedError("closed")))  # it went, goodbye sent
        self.clock.advance(self.settings.ping_timeout * 2)
        self.assertFalse(link.server_transport.disconnected)

    def test_a_push_that_makes_no_progress_is_given_up(self) -> None:
        sink, body, offer = self.pushing_a_segment()
        link = self.connector.link
        # A body that does not grow is no stall: its encoder is waiting.
        self.clock.advance(6.0)
        link.pump()
        self.assertEqual(len(link.server.pushes), 1)
        # A subscriber that does not take what there is to send is.
        link.server.pauseProducing()
        body.chunks.append(b"moof2")
        offer.grew()
        self.clock.advance(6.0)
        link.pump()
        self.assertEqual(link.server.pushes, {})
        self.assertEqual(sink.failed, [SEG])

    def test_a_manifest_waiting_for_a_place_does_not_hold_up_the_open_pushes(self) -> None:
        sink = Sink()
        self.subscribed(sink)
        bodies = []
        for n in range(self.settings.max_pushes):  # every place taken by a growing segment
            body = Growing()
            body.chunks.append(b"a")
            bodies.append(body)
            self.hub.offer(segment_offer(body, b"/live/cam/720p/%d.m4s" % (n,)))
        self.hub.offer(whole("cam", MPD, 200, MPD_HEADERS, b"<MPD/>", latest_wins=True, made=0.0))
        self.connector.link.pump()
        self.assertNotIn(MPD, sink.bodies)
        for body in bodies:  # the segments grow and end: the manifest gets its place
            body.chunks.append(b"b")
            body.complete = True
        offers = [o for c in self.hub.subscribers["cam"] for p in c.pushes.values() for o in [p.offer]]
        for offer in offers:
            offer.grew()
        self.connector.link.pump()
        self.assertEqual(len(sink.ended), self.settings.max_pushes + 1)
        self.assertEqual(sink.bodies[MPD], [b"<MPD/>"])

    def test_a_connection_closed_by_its_own_goaway_leaves_no_subscription_behind(self) -> None:
        self.settings = ChannelSettings(last_stream_id=4)
        self.hub.settings = self.settings
        self.subscribed()
        link = self.connector.link
        for _ in range(3):
            self.hub.offer(whole("cam", MPD, 200, MPD_HEADERS, b"v", latest_wins=False, made=0.0))
            link.pump()
        self.assertTrue(link.server_transport.disconnecting)
        link.server.connectionLost(Failure(ConnectionRefusedError("closed")))
        self.assertEqual(self.hub.subscribers, {})
        self.assertEqual(self.source.unwanted_streams, ["cam"])

    def test_made_up_streams_push_out_the_least_recently_asked_never_a_held_one(self) -> None:
        self.settings = ChannelSettings(max_subscriptions=3)
        client = self.client()
        client.hold("held")
        for name in ("a", "b", "c", "d"):
            client.want(name)
            self.clock.advance(1)
        self.connector.link.pump()
        self.assertEqual(set(client.wanted), {"held", "c", "d"})

    def test_unsubscribing_tells_the_source(self) -> None:
        client = self.subscribed(idle=10.0)
        self.clock.advance(11.0)
        self.connector.link.pump()
        self.assertFalse(client.pushing("cam"))
        self.assertEqual(self.source.unwanted_streams, ["cam"])
        self.assertEqual(self.hub.subscribers, {})

    def test_a_held_stream_is_not_unsubscribed_however_long_it_is_idle(self) -> None:
        client = self.client()
        client.hold("cam")
        self.connector.link.pump()
        self.clock.advance(100.0)
        self.connector.link.pump()
        self.assertTrue(client.pushing("cam"))
        client.release("cam")
        self.clock.advance(40.0)
        self.connector.link.pump()
        self.assertFalse(client.pushing("cam"))


class ClientTests(ChannelCase):
    def test_an_upstream_down_is_tried_again_with_backoff_and_subscribed_again(self) -> None:
        self.connector.down = True
        client = self.client()
        client.want("cam")
        self.assertEqual(self.connector.attempts, 1)
        self.clock.advance(0.3)
        self.clock.advance(0.6)
        self.clock.advance(1.2)
        attempts = self.connector.attempts
        self.assertGreaterEqual(attempts, 2)
        self.connector.down = False
        self.clock.advance(11.0)
        self.connector.link.pump()
        self.assertTrue(client.pushing("cam"))
        # The seconds it fetched instead are counted.
        self.assertGreater(pm.FALLBACK_SECONDS.labels(tier="pop-cache")._value.get(), 0)

    def test_a_lost_connection_is_made_again_and_every_stream_subscribed_again(self) -> None:
        sink = Sink()
        client = self.subscribed(sink)
        client.want("other")
        self.connector.link.pump()
        first = self.connector.link
        first.close()
        self.assertFalse(client.pushing("cam"))
        self.assertEqual(sorted(sink.stopped_streams), ["cam", "other"])
        self.clock.advance(1.0)
        self.assertIsNot(self.connector.link, first)
        self.connector.link.pump()
        self.assertTrue(client.pushing("cam") and client.pushing("other"))

    def test_a_segment_waiting_for_its_push_is_fetched_the_moment_the_connection_is_lost(self) -> None:
        # The origin pushing it was killed: the push a viewer waits for will not come.
        upstream = Upstream()
        cache = CachingResource("pop-cache", upstream, self.clock, CacheSettings())
        client = self.subscribed(CachePushSink(cache))
        cache.pushing, cache.push_wait = client.pushing, 1.5
        viewer = Viewer(SEG)
        cache.render(viewer)
        self.clock.advance(0.2)
        self.assertEqual(upstream.paths, [])
        self.connector.down = True
        self.connector.link.close()
        self.assertEqual(upstream.paths, [SEG])
        upstream.answer(Streamed(GROWING)).send(b"moof1")
        self.assertEqual(viewer.body(), b"moof1")

    def test_a_publisher_that_stops_answering_pings_is_left(self) -> None:
        client = self.subscribed()
        link = self.connector.link
        link.reading = False  # nothing more comes from the publisher
        for _ in range(10):
            self.clock.advance(0.5)
            link.pump()
        self.assertFalse(client.pushing("cam"))
        self.assertTrue(link.client_transport.disconnecting)


class CachePushTests(SynchronousTestCase):
    """Pushed answers in a real cache engine, and relayed on (the origin)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.upstream = Upstream()
        self.cache = CachingResource("origin", self.upstream, self.clock, CacheSettings())
        self.hub = PushHub("origin", self.clock, ChannelSettings(), None)
        self.sink = CachePushSink(self.cache, relay=self.hub)

    def get(self, path: bytes) -> Viewer:
        viewer = Viewer(path)
        self.cache.render(viewer)
        return viewer

    def test_a_pushed_growing_segment_is_read_by_viewers_with_no_fetch_and_stored_once_whole(self) -> None:
        target = self.sink.pushed("cam", SEG, 200, SEG_HEADERS)
        assert target is not None
        target.data(b"moof1")
        viewer = self.get(SEG)
        self.assertEqual(viewer.body(), b"moof1")
        self.assertEqual(viewer.header(b"x-fbstream-segment"), b"growing")
        target.data(b"moof2")
        target.end()
        self.assertEqual(viewer.body(), b"moof1moof2")
        self.assertTrue(viewer.finished)
        later = self.get(SEG)
        self.assertEqual(later.body(), b"moof1moof2")
        self.assertEqual(later.header(b"x-cache"), b"HIT origin")
        self.assertEqual(self.upstream.paths, [])
        # Held already: pushed again, it is refused.
        self.assertIsNone(self.sink.pushed("cam", SEG, 200, SEG_HEADERS))

    def test_a_push_answers_a_fetch_still_waiting_for_its_first_byte(self) -> None:
        viewer = self.get(SEG)
        self.assertEqual(self.upstream.paths, [SEG])
        target = self.sink.pushed("cam", SEG, 200, SEG_HEADERS)
        assert target is not None
        target.data(b"moof1")
        self.assertEqual(viewer.body(), b"moof1")
        self.assertEqual(self.upstream.cancelled, [SEG])

    def test_a_push_of_an_object_a_fetch_is_reading_is_refused(self) -> None:
        self.get(SEG)
        self.upstream.answer(Streamed(GROWING)).send(b"moof1")
        self.assertIsNone(self.sink.pushed("cam", SEG, 200, SEG_HEADERS))

    def test_a_new_manifest_version_replaces_the_one_held(self) -> None:
        for version in (b"v1", b"v2"):
            target = self.sink.pushed("cam", MPD, 200, MPD_HEADERS)
            assert target is not None
            target.data(version)
            target.end()
            self.assertEqual(self.get(MPD).body(), version)
        self.assertEqual(self.upstream.paths, [])

    def test_a_pushed_manifest_stays_fresh_while_pushes_flow_and_ages_once_they_stop(self) -> None:
        flowing = {"cam"}
        self.cache.pushing = lambda stream: stream in flowing
        target = self.sink.pushed("cam", MPD, 200, MPD_HEADERS)
        assert target is not None
        target.data(b"v1")
        target.end()
        self.clock.advance(3.5)  # max-age=1, past: the next version would have come by now
        self.assertEqual(self.get(MPD).body(), b"v1")
        self.assertEqual(self.upstream.paths, [])
        # The tier in front (a PoP's proxy layer) is told to keep none.
        self.cache.manifests_uncached = True
        self.assertEqual(self.get(MPD).header(b"cache-control"), b"public, max-age=0")
        flowing.clear()
        self.sink.stopped("cam")
        self.get(MPD)
        self.assertEqual(self.upstream.paths, [MPD])  # its own lifetime is over: fetched

    def test_a_pushed_manifest_not_replaced_in_time_is_fetched_again(self) -> None:
        # Pushes "flow" here, but stopped upstream of the tier that pushes to us.
        self.cache.pushing = lambda stream: True
        target = self.sink.pushed("cam", MPD, 200, MPD_HEADERS)
        assert target is not None
        target.data(b"v1")
        target.end()
        self.clock.advance(4.5)  # max-age=1 and the slack of 3 s, both over
        self.get(MPD)
        self.assertEqual(self.upstream.paths, [MPD])

    def test_a_segment_older_than_the_newest_pushed_is_fetched_at_once(self) -> None:
        self.cache.pushing = lambda stream: True
        self.cache.push_wait = 1.5
        target = self.sink.pushed("cam", SEG, 200, SEG_HEADERS)  # segment 7
        assert target is not None
        self.get(b"/live/cam/720p/5.m4s")  # made before the subscription: never pushed
        self.assertEqual(self.upstream.paths, [b"/live/cam/720p/5.m4s"])

    def test_a_part_or_rendition_not_pushed_yet_of_the_segment_being_pushed_waits_for_its_push(self) -> None:
        # Segment 7 of 720p and its first part are here; its next part, and
        # segment 7 of 360p (cut at the same moment), are on their way.
        self.cache.pushing = lambda stream: True
        self.cache.push_wait = 1.5
        for path in (SEG, b"/live/cam/720p/7.0.m4s"):
            target = self.sink.pushed("cam", path, 200, SEG_HEADERS)
            assert target is not None
            target.data(b"moof1")
        self.get(b"/live/cam/720p/7.1.m4s")
        self.get(b"/live/cam/360p/7.m4s")
        self.get(b"/live/cam/360p/7.0.m4s")
        self.assertEqual(self.upstream.paths, [])
        # An older part of the same segment was pushed before this tier held it: fetched.
        self.get(b"/live/cam/720p/6.3.m4s")
        self.assertEqual(self.upstream.paths, [b"/live/cam/720p/6.3.m4s"])
        self.clock.advance(1.6)
        self.assertEqual(sorted(self.upstream.paths), sorted([
            b"/live/cam/720p/6.3.m4s", b"/live/cam/720p/7.1.m4s", b"/live/cam/360p/7.m4s",
            b"/live/cam/360p/7.0.m4s"]))

    def test_a_newer_manifest_pushed_while_one_is_fetched_replaces_it(self) -> None:
        viewer = self.get(MPD)
        fetched = self.upstream.answer(Streamed({b"content-type": [b"application/dash+xml"],
                                                 b"cache-control": [b"public, max-age=1"]}))
        fetched.send(b"old")
        target = self.sink.pushed("cam", MPD, 200, MPD_HEADERS)
        assert target is not None
        target.data(b"new")
        target.end()
        fetched.end()
        self.assertEqual(viewer.body(), b"old")
        self.assertEqual(self.get(MPD).body(), b"new")

    def test_a_segment_asked_for_before_its_push_waits_for_it_then_is_fetched(self) -> None:
        self.cache.pushing = lambda stream: True
        self.cache.push_wait = 1.5
        early = self.get(SEG)
        self.clock.advance(0.5)
        self.assertEqual(self.upstream.paths, [])
        target = self.sink.pushed("cam", SEG, 200, SEG_HEADERS)
        assert target is not None
        target.data(b"moof1")
        self.assertEqual(early.body(), b"moof1")
        self.clock.advance(5)
        self.assertEqual(self.upstream.paths, [])
        # A push that never comes: fetched once the wait is over.
        other = b"/live/cam/720p/8.m4s"
        self.get(other)
        self.clock.advance(1.4)
        self.assertEqual(self.upstream.paths, [])
        self.clock.advance(0.2)
        self.assertEqual(self.upstream.paths, [other])

    def test_what_waits_for_a_push_is_fetched_the_moment_its_stream_s_pushes_stop(self) -> None:
        flowing = {"cam", "other"}
        self.cache.pushing = lambda stream: stream in flowing
        self.cache.push_wait = 1.5
        other = b"/live/other/720p/7.m4s"
        waiting, elsewhere = self.get(SEG), self.get(other)
        self.clock.advance(0.3)
        self.assertEqual(self.upstream.paths, [])
        flowing.discard("cam")
        self.sink.stopped("cam")
        self.assertEqual(self.upstream.paths, [SEG])
        self.upstream.answer(Streamed(GROWING)).send(b"moof1")
        self.assertEqual(waiting.body(), b"moof1")
        # Another stream's pushes flow on: its segment waits its time for them.
        self.clock.advance(1.1)
        self.assertEqual(self.upstream.paths, [SEG])
        self.clock.advance(0.2)
        self.assertEqual(self.upstream.paths, [SEG, other])
        self.assertEqual(elsewhere.body(), b"")

    def test_a_reset_push_fails_no_one_who_has_not_started_and_stores_nothing(self) -> None:
        target = self.sink.pushed("cam", SEG, 200, SEG_HEADERS)
        assert target is not None
        target.data(b"half")
        target.fail()
        self.assertEqual(self.upstream.paths, [])  # no one reads it: dropped, not fetched
        viewer = self.get(SEG)
        self.assertEqual(self.upstream.paths, [SEG])  # fetched as if never pushed
        self.upstream.answer(Streamed(GROWING)).send(b"whole")
        self.assertEqual(viewer.body(), b"whole")

    def reset_while_read(self) -> tuple[Viewer, Viewer, Viewer]:
        """
        A growing segment pushed, read by a viewer who has all of it so far,
        one paused after its first chunk and one paused before any; then its
        push is reset upstream.
        """
        target = self.sink.pushed("cam", SEG, 200, SEG_HEADERS)
        assert target is not None
        empty = self.get(SEG)
        empty.producer.pauseProducing()  # its transport is full
        target.data(b"moof1")
        ahead, behind = self.get(SEG), self.get(SEG)
        behind.producer.pauseProducing()
        target.data(b"moof2")
        target.fail()
        self.assertEqual([v.body() for v in (ahead, behind, empty)], [b"moof1moof2", b"moof1", b""])
        return ahead, behind, empty

    def test_a_reset_push_is_fetched_once_for_its_viewers_who_each_go_on_from_where_they_were(self) -> None:
        viewers = self.reset_while_read()
        self.assertEqual(self.upstream.paths, [SEG])  # one fetch, however many read it
        self.assertFalse(any(v.finished or v.aborted for v in viewers))
        # The object from its first byte: what is held is checked and
        # skipped, whatever the pieces; the rest continues it.
        body = self.upstream.answer(Streamed(GROWING))
        body.send(b"moof1mo")
        body.send(b"of2moof3")
        for viewer in viewers[1:]:
            viewer.producer.resumeProducing()
        joined = self.get(SEG)  # meanwhile: it reads what is held, then the rest as it comes
        self.assertEqual(joined.body(), b"moof1moof2moof3")
        body.send(b"moof4")
        body.end()
        for viewer in (*viewers, joined):
            self.assertEqual(viewer.body(), b"moof1moof2moof3moof4")
            self.assertTrue(viewer.finished)
            self.assertFalse(viewer.aborted)
        later = self.get(SEG)
        self.assertEqual((later.body(), later.header(b"x-cache")), (b"moof1moof2moof3moof4", b"HIT origin"))
        self.assertEqual(self.upstream.paths, [SEG])

    def test_the_fetch_of_a_reset_push_may_find_it_complete(self) -> None:
        viewers = self.reset_while_read()
        whole_segment = Streamed({b"content-type": [b"video/mp4"],
                                  b"cache-control": [b"public, max-age=31536000, immutable"]})
        self.upstream.answer(whole_segment).send(b"moof1moof2moof3")
        for viewer in viewers[1:]:
            viewer.producer.resumeProducing()
        whole_segment.end()
        for viewer in viewers:
            self.assertEqual(viewer.body(), b"moof1moof2moof3")
            self.assertTrue(viewer.finished)

    def test_a_reset_push_whose_fetch_fails_fails_its_viewers_as_a_failed_fetch_does(self) -> None:
        for how in ("refused", "404", "another body", "shorter"):
            self.setUp()
            ahead, behind, empty = self.reset_while_read()
            if how == "refused":
                self.upstream.requests[-1][1].errback(ConnectionRefusedError())
            elif how == "404":
                self.upstream.answer(Streamed(GROWING, code=404)).send(b"no such segment")
            else:
                body = self.upstream.answer(Streamed(GROWING))
                body.send(b"moof1" if how == "shorter" else b"moofAmoofB")
                if how == "shorter":
                    body.end()
            # Cut short, each of them: never a body taken for whole.
            for viewer in (ahead, behind, empty):
                self.assertTrue(viewer.aborted, how)
                self.assertFalse(viewer.finished, how)
            self.assertIsNone(self.cache.store.get(SEG, self.clock.seconds()), how)

    def test_a_manifest_whose_push_was_reset_before_its_body_is_the_version_fetched(self) -> None:
        target = self.sink.pushed("cam", MPD, 200, MPD_HEADERS)
        assert target is not None
        viewer = self.get(MPD)
        target.fail()  # a newer version overtook it upstream
        newer = self.upstream.answer(Streamed({b"content-type": [b"application/dash+xml"],
                                               b"cache-control": [b"public, max-age=1"]}))
        newer.send(b"<MPD v2/>")
        newer.end()
        self.assertEqual((viewer.body(), viewer.finished), (b"<MPD v2/>", True))

    def test_the_fetch_of_a_reset_push_is_cancelled_when_its_last_viewer_leaves(self) -> None:
        viewers = self.reset_while_read()
        for viewer in viewers:
            viewer.leave()
        self.assertEqual(self.upstream.cancelled, [SEG])

    def lag(self) -> tuple[float, float]:
        """How many push lags this tier observed, and their sum."""
        labels = {"tier": "origin"}
        return (REGISTRY.get_sample_value("fbstream_push_lag_seconds_count", labels) or 0.0,
                REGISTRY.get_sample_value("fbstream_push_lag_seconds_sum", labels) or 0.0)

    def test_the_push_lag_of_a_whole_object_runs_until_it_is_held_whole(self) -> None:
        count, total = self.lag()
        made = (b"x-fbstream-made", b"%.3f" % (self.clock.seconds() - 0.05,))
        target = self.sink.pushed("cam", MPD, 200, MPD_HEADERS + [made])
        assert target is not None
        self.clock.advance(0.1)
        target.data(b"<MPD")
        self.assertEqual(self.lag(), (count, total))  # its headers and a part of it: not servable yet
        self.clock.advance(0.1)
        target.data(b"/>")
        target.end()
        self.assertEqual(self.lag()[0], count + 1)
        self.assertAlmostEqual(self.lag()[1] - total, 0.25, places=3)
        self.assertEqual(self.get(MPD).body(), b"<MPD/>")  # held: a hit

    def test_the_push_lag_of_a_growing_segment_runs_until_its_first_chunk_is_held(self) -> None:
        count, total = self.lag()
        made = (b"x-fbstream-made", b"%.3f" % (self.clock.seconds(),))
        target = self.sink.pushed("cam", SEG, 200, SEG_HEADERS + [made])
        assert target is not None
        self.clock.advance(0.02)
        self.assertEqual(self.lag(), (count, total))
        target.data(b"moof1")
        self.assertEqual(self.lag()[0], count + 1)
        self.assertAlmostEqual(self.lag()[1] - total, 0.02, places=3)
        self.clock.advance(1.0)  # the rest of the segment: the same version, not observed again
        target.data(b"moof2")
        target.end()
        self.assertEqual(self.lag()[0], count + 1)

    def test_a_push_reset_before_it_is_held_has_no_lag(self) -> None:
        count, _ = self.lag()
        made = (b"x-fbstream-made", b"%.3f" % (self.clock.seconds(),))
        target = self.sink.pushed("cam", MPD, 200, MPD_HEADERS + [made])
        assert target is not None
        target.data(b"<MPD")
        target.fail()
        self.assertEqual(self.lag()[0], count)

    def test_the_relay_offers_what_comes_to_its_own_subscribers_and_remembers_the_current(self) -> None:
        upstream_clients: list[Any] = []

        class Held:
            def __init__(self) -> None:
                self.held: list[str] = []
                upstream_clients.append(self)

            def hold(self, stream: str) -> None:
                self.held.append(stream)

            def release(self, stream: str) -> None:
                self.held.remove(stream)

        relay = RelaySource(self.sink, [Held()])  # type: ignore[list-item]
        self.hub.source = relay
        relay.wanted("cam")
        self.assertEqual(upstream_clients[0].held, ["cam"])
        self.hub.subscribers["cam"] = set()  # as if a PoP had subscribed
        self.hub.subscribers["cam"].add(_Recorder())  # type: ignore[arg-type]
        target = self.sink.pushed("cam", MPD, 200, MPD_HEADERS + [(b"x-fbstream-made", b"123.5")])
        assert target is not None
        target.data(b"<MPD/>")
        target.end()
        offered = next(iter(self.hub.subscribers["cam"])).offers  # type: ignore[attr-defined]
        self.assertEqual([o.path for o in offered], [MPD])
        self.assertEqual(offered[0].made, 123.5)
        self.assertEqual([o.path for o in relay.current("cam")], [MPD])
        relay.unwanted("cam")
        self.assertEqual(upstream_clients[0].held, [])
        self.assertEqual(relay.current("cam"), [])


class RelayHeldTests(CachePushTests):
    """A push the origin refuses because it holds the object already: its own copy goes on."""

    def setUp(self) -> None:
        super().setUp()
        self.recorder = _Recorder()
        self.hub.subscribers["cam"] = {self.recorder}  # type: ignore[arg-type]

    def test_a_stored_object_is_offered_on(self) -> None:
        self.get(b"/live/cam/720p/init.mp4")
        body = self.upstream.answer(Streamed({b"content-type": [b"video/mp4"],
                                              b"cache-control": [b"public, max-age=31536000, immutable"]}))
        body.send(b"init")
        body.end()
        self.assertIsNone(self.sink.pushed("cam", b"/live/cam/720p/init.mp4", 200, []))
        [offer] = self.recorder.offers
        self.assertEqual((offer.path, offer.body.chunks, offer.body.complete),
                         (b"/live/cam/720p/init.mp4", [b"init"], True))

    def test_an_object_being_fetched_is_offered_on_as_it_grows(self) -> None:
        self.get(SEG)
        body = self.upstream.answer(Streamed(GROWING))
        body.send(b"moof1")
        self.assertIsNone(self.sink.pushed("cam", SEG, 200, SEG_HEADERS))
        [offer] = self.recorder.offers
        grew: list[bool] = []
        offer.watch(lambda: grew.append(offer.body.complete))
        body.send(b"moof2")
        body.end()
        self.assertEqual(grew, [False, True])
        self.assertEqual(b"".join(offer.body.chunks), b"moof1moof2")


@given(st.binary(max_size=64), st.data())
def test_a_body_read_again_is_checked_and_skipped_up_to_the_bytes_held_in_any_pieces(body: bytes, data: Any) -> None:
    held = data.draw(st.integers(0, len(body)))
    cuts = sorted(data.draw(st.lists(st.integers(0, held), max_size=4)))
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, held])]  # as the push brought them
    for byte_at_a_time in (False, True):
        reading = _Held(list(chunks), held)
        pieces = [body[i:i + 1] for i in range(len(body))] if byte_at_a_time else [body[:3], body[3:]]
        past = [reading.past(piece) for piece in pieces]
        assert None not in past
        assert b"".join(p for p in past if p is not None) == body[held:]
        assert reading.left == 0
    if held:
        changed = bytes([body[held - 1] ^ 1])
        assert _Held(list(chunks), held).past(body[:held - 1] + changed) is None


class _Recorder:
    def __init__(self) -> None:
        self.offers: list[Offer] = []

    def offer(self, offer: Offer) -> None:
        self.offers.append(offer)


class RelayedResetTests(ChannelCase):
    """
    The origin's push of a segment is reset upstream (by the encoder) while
    the origin pushes it on to a PoP whose viewer reads it: real caches at
    both, joined by the push channel.
    """

    def setUp(self) -> None:
        super().setUp()
        self.origin_upstream = Upstream()
        origin = CachingResource("origin", self.origin_upstream, self.clock, CacheSettings())
        self.origin_sink = CachePushSink(origin, relay=self.hub)
        self.hub.source = RelaySource(self.origin_sink, [])
        self.pop_upstream = Upstream()
        self.pop = CachingResource("pop-cache", self.pop_upstream, self.clock, CacheSettings())
        self.subscribed(CachePushSink(self.pop))
        self.link = self.connector.link

    def reset_at_the_origin(self) -> Viewer:
        """The segment's first chunk at the origin and on at the PoP, read there; then the encoder's push is reset."""
        target = self.origin_sink.pushed("cam", SEG, 200, SEG_HEADERS)
        assert target is not None
        target.data(b"moof1")
        self.link.pump()
        viewer = Viewer(SEG)
        self.pop.render(viewer)
        self.assertEqual(viewer.body(), b"moof1")
        target.fail()
        self.link.pump()
        return viewer

    def test_the_pops_push_goes_on_from_the_origins_fetch(self) -> None:
        viewer = self.reset_at_the_origin()
        self.assertEqual(self.origin_upstream.paths, [SEG])
        body = self.origin_upstream.answer(Streamed(GROWING))
        body.send(b"moof1moof2")
        self.link.pump()
        self.assertEqual(viewer.body(), b"moof1moof2")
        body.end()
        self.link.pump()
        self.assertTrue(viewer.finished)
        self.assertFalse(viewer.aborted)
        # The PoP never knew: its push went on, and it fetched nothing.
        self.assertEqual(self.pop_upstream.paths, [])
        self.assertEqual(self.pop.store.get(SEG, self.clock.seconds()).chunks, [b"moof1moof2"])  # type: ignore[union-attr]

    def test_if_the_origins_fetch_fails_the_pop_fetches_for_its_viewer(self) -> None:
        viewer = self.reset_at_the_origin()
        self.origin_upstream.requests[-1][1].errback(ConnectionRefusedError())
        self.link.pump()
        # The PoP's push is reset in turn: it fetches, from the byte its viewer reached.
        self.assertEqual(self.pop_upstream.paths, [SEG])
        body = self.pop_upstream.answer(Streamed(GROWING))
        body.send(b"moof1moof2")
        body.end()
        self.assertEqual(viewer.body(), b"moof1moof2")
        self.assertTrue(viewer.finished)
