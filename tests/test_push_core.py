"""
The push channel's sans-IO core: a Publisher and a Subscriber talking to
each other through bytes alone, fed whole and one byte at a time, and
fuzzed with hostile frame sequences.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
from hypothesis import given, settings
from hypothesis import strategies as st

from fbstream.push.core import (
    SUBSCRIBE,
    Accepted,
    ChannelSettings,
    Closed,
    GoingAway,
    Publisher,
    PushCancelled,
    PushData,
    PushEnded,
    PushReset,
    PushStarted,
    Rejected,
    Subscribed,
    Subscriber,
    Unsubscribed,
)

SECRET = b"s3cret"
MANIFEST = b"/live/cam/manifest.mpd"
HEADERS = [(b"content-type", b"application/dash+xml"), (b"cache-control", b"public, max-age=1")]


def pair(settings=None, secret=SECRET, their_secret=SECRET):
    settings = settings or ChannelSettings()
    pub = Publisher(settings, secret=secret)
    sub = Subscriber(settings, secret=their_secret)
    pub.start()
    sub.start()
    return pub, sub


def exchange(pub, sub, byte_at_a_time=False):
    """Move bytes both ways until neither has more; the events each side saw."""
    seen_pub: list = []
    seen_sub: list = []
    while True:
        to_pub, to_sub = sub.data_to_send(), pub.data_to_send()
        if not to_pub and not to_sub:
            return seen_pub, seen_sub
        for data, side, seen in ((to_pub, pub, seen_pub), (to_sub, sub, seen_sub)):
            pieces = [data[i:i + 1] for i in range(len(data))] if byte_at_a_time else [data]
            for piece in pieces:
                if piece:
                    seen.extend(side.receive(piece))


def subscribed(stream="cam", **kw):
    pub, sub = pair(**kw)
    assert sub.subscribe(stream)
    seen_pub, seen_sub = exchange(pub, sub)
    return pub, sub, seen_pub, seen_sub


def test_a_subscription_is_accepted_and_pushes_flow_whole_and_byte_by_byte():
    for byte_at_a_time in (False, True):
        pub, sub = pair()
        sub.subscribe("cam")
        seen_pub, seen_sub = exchange(pub, sub, byte_at_a_time)
        assert seen_pub == [Subscribed("cam")]
        assert Accepted("cam") in seen_sub
        push = pub.push("cam", MANIFEST, 200, HEADERS)
        assert push is not None and push % 2 == 0
        pub.send(push, b"<MPD/>", end=True)
        _, seen_sub = exchange(pub, sub, byte_at_a_time)
        started = [e for e in seen_sub if isinstance(e, PushStarted)]
        assert started == [PushStarted(push, "cam", MANIFEST, 200, HEADERS)]
        assert b"".join(e.data for e in seen_sub if isinstance(e, PushData)) == b"<MPD/>"
        assert seen_sub[-1] == PushEnded(push)
        assert pub.pushes == {} and sub.pushes == {}


def test_a_growing_body_is_pushed_chunk_by_chunk_within_the_windows():
    pub, sub, _, _ = subscribed()
    push = pub.push("cam", b"/live/cam/720p/7.m4s", 200, [(b"x-fbstream-segment", b"growing")])
    # The subscriber's SETTINGS sized the window for segments.
    assert pub.room(push) == ChannelSettings().window
    chunk = bytes(range(256)) * 1000  # 256 kB: larger than h2's frames
    pub.send(push, chunk)
    _, seen = exchange(pub, sub)
    assert b"".join(e.data for e in seen if isinstance(e, PushData)) == chunk
    # The subscriber acknowledges what it takes: three windows' worth flows
    # through, each piece no larger than the room the publisher has then.
    total, sent = 3 * ChannelSettings().window, 0
    received = 0
    while sent < total:
        room = pub.room(push)
        assert room > 0
        piece = min(room, total - sent, 1 << 20)
        pub.send(push, bytes(piece))
        sent += piece
        _, seen = exchange(pub, sub)
        received += sum(len(e.data) for e in seen if isinstance(e, PushData))
    assert received == total
    pub.send(push, b"end", end=True)
    _, seen = exchange(pub, sub)
    assert seen[-1] == PushEnded(push)


def test_without_the_secret_a_subscription_is_refused():
    pub, sub = pair(their_secret=b"wrong")
    sub.subscribe("cam")
    seen_pub, seen_sub = exchange(pub, sub)
    assert seen_pub == []
    assert Rejected("cam", 401) in seen_sub
    assert pub.parents == {} and sub.subscriptions == {}
    assert pub.push("cam", MANIFEST, 200, HEADERS) is None


def test_unsubscribing_resets_the_parent_and_stops_pushes_for_that_stream():
    pub, sub, _, _ = subscribed()
    sub.subscribe("other")
    exchange(pub, sub)
    sub.unsubscribe("cam")
    seen_pub, _ = exchange(pub, sub)
    assert seen_pub == [Unsubscribed("cam")]
    assert pub.push("cam", MANIFEST, 200, HEADERS) is None
    assert pub.push("other", b"/live/other/manifest.mpd", 200, HEADERS) is not None


def test_pushes_in_flight_when_the_subscriber_leaves_a_stream_cost_it_nothing_else():
    # RFC 9113 section 5.1: a PUSH_PROMISE that crosses our RST_STREAM of its
    # parent still reserves the promised stream, whose response and body
    # follow and are dropped; the other subscriptions go on.
    pub, sub, _, _ = subscribed()
    sub.subscribe("other")
    exchange(pub, sub)
    sub.unsubscribe("cam")  # not yet at the publisher...
    crossing = pub.push("cam", b"/live/cam/720p/8.m4s", 200, [(b"x-fbstream-segment", b"growing")])
    pub.send(crossing, b"moof", end=True)
    other = pub.push("other", b"/live/other/manifest.mpd", 200, HEADERS)
    pub.send(other, b"<MPD/>", end=True)
    seen_sub = sub.receive(pub.data_to_send())  # ...as these cross it
    assert not any(isinstance(e, Closed) for e in seen_sub), seen_sub
    assert [e.path for e in seen_sub if isinstance(e, PushStarted)] == [b"/live/other/manifest.mpd"]
    assert seen_sub[-1] == PushEnded(other)
    seen_pub, _ = exchange(pub, sub)
    assert Unsubscribed("cam") in seen_pub
    assert sub.closed is None and pub.closed is None
    again = pub.push("other", b"/live/other/manifest.mpd", 200, HEADERS)
    pub.send(again, b"<MPD v2/>", end=True)
    _, seen_sub = exchange(pub, sub)
    assert seen_sub[-1] == PushEnded(again)


def test_a_refused_push_is_cancelled_at_the_publisher():
    pub, sub, _, _ = subscribed()
    push = pub.push("cam", b"/live/cam/720p/8.m4s", 200, [])
    _, seen = exchange(pub, sub)
    assert isinstance(seen[0], PushStarted)
    sub.refuse(push)
    seen_pub, _ = exchange(pub, sub)
    assert seen_pub == [PushCancelled(push)]
    assert pub.room(push) == 0
    pub.send(push, b"ignored")  # a push given up is silently not sent
    assert exchange(pub, sub) == ([], [])


def test_a_publisher_cancelling_a_push_tells_the_subscriber():
    pub, sub, _, _ = subscribed()
    push = pub.push("cam", b"/live/cam/720p/8.m4s", 200, [])
    pub.send(push, b"half")
    exchange(pub, sub)
    pub.cancel(push)
    _, seen = exchange(pub, sub)
    assert seen == [PushReset(push)]


def test_open_pushes_are_bounded_by_the_subscribers_limit():
    pub, sub, _, _ = subscribed(settings=ChannelSettings(max_pushes=3))
    pushes = [pub.push("cam", b"/live/cam/720p/%d.m4s" % (n,), 200, []) for n in range(5)]
    assert pushes[3:] == [None, None]
    pub.send(pushes[0], b"x", end=True)
    assert pub.push("cam", b"/live/cam/720p/9.m4s", 200, []) is not None


def test_stream_ids_running_out_send_goaway_and_the_subscriber_goes():
    pub, sub, _, _ = subscribed(settings=ChannelSettings(last_stream_id=6))
    assert pub.push("cam", MANIFEST, 200, HEADERS) == 2
    pub.send(2, b"a", end=True)
    assert pub.push("cam", MANIFEST, 200, HEADERS) == 4
    pub.send(4, b"b", end=True)
    assert pub.push("cam", MANIFEST, 200, HEADERS) == 6
    pub.send(6, b"c", end=True)
    assert pub.push("cam", MANIFEST, 200, HEADERS) is None
    _, seen = exchange(pub, sub)
    assert GoingAway() in seen and isinstance(seen[-1], Closed)
    assert not sub.subscribe("more")


def test_a_peer_that_stops_answering_pings_is_given_up():
    pub, sub, _, _ = subscribed(settings=ChannelSettings(ping_interval=1.0, ping_timeout=3.0))
    assert sub.tick(10.0) == []
    exchange(pub, sub)  # answered
    assert sub.tick(12.0) == []  # a new ping
    # Now the publisher is gone silent: nothing is delivered.
    sub.data_to_send()
    assert sub.tick(14.0) == []
    events = sub.tick(15.5)
    assert isinstance(events[-1], Closed) and "ping" in events[-1].reason
    assert Rejected("cam", 0) in events


def hand_made_publisher(sub):
    """A publisher written on h2 directly, that has accepted ``sub``'s subscription (stream 1): it pushes anything."""
    evil = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    evil.initiate_connection()
    evil.receive_data(sub.data_to_send())
    evil.send_headers(1, [(b":status", b"200")])
    return evil


def test_a_push_outside_the_subscribed_stream_closes_the_connection():
    sub = Subscriber(ChannelSettings())
    sub.start()
    sub.subscribe("cam")
    evil = hand_made_publisher(sub)
    evil.push_stream(1, 2, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"x"),
                            (b":path", b"/live/other/manifest.mpd")])
    events = sub.receive(evil.data_to_send())
    assert isinstance(events[-1], Closed) and "/live/other/manifest.mpd" in events[-1].reason
    assert sub.receive(b"more") == []


def test_a_request_body_or_a_stranger_path_is_handled():
    pub = Publisher(ChannelSettings(), secret=None)
    pub.start()
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    client.send_headers(1, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"x"),
                            (b":path", b"/etc/passwd")], end_stream=True)
    assert pub.receive(client.data_to_send()) == []
    answers = client.receive_data(pub.data_to_send())
    assert any(isinstance(e, h2.events.ResponseReceived) and (b":status", b"404") in e.headers for e in answers)
    client.send_headers(3, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"x"),
                            (b":path", SUBSCRIBE + b"cam")])
    client.send_data(3, b"a body")
    events = pub.receive(client.data_to_send())
    assert events[0] == Subscribed("cam")
    assert isinstance(events[-1], Closed) and "request body" in events[-1].reason
    assert Unsubscribed("cam") in events


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=30))
def test_garbage_after_the_preface_never_raises(pieces):
    # The subscriber's side, given what a broken or hostile publisher might send.
    pub, sub, _, _ = subscribed()
    for piece in pieces:
        events = sub.receive(piece)
        assert all(not isinstance(e, Exception) for e in events)
    # The publisher's side, likewise.
    pub2 = Publisher(ChannelSettings())
    pub2.start()
    pub2.receive(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    for piece in pieces:
        pub2.receive(piece)


FRAME_TYPES = st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0xA, 0xFF])


@st.composite
def frames(draw):
    kind = draw(FRAME_TYPES)
    flags = draw(st.integers(0, 255))
    stream = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 2**31 - 1]))
    payload = draw(st.binary(max_size=40))
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


@settings(max_examples=400, deadline=None)
@given(st.lists(frames(), max_size=12))
def test_hostile_frame_sequences_close_one_connection_with_a_reason(sequence):
    pub, sub, _, _ = subscribed()
    push = pub.push("cam", MANIFEST, 200, HEADERS)
    pub.send(push, b"<MPD", end=False)
    exchange(pub, sub)
    for side in (pub, sub):
        for frame in sequence:
            events = side.receive(frame)
            closed = [e for e in events if isinstance(e, Closed)]
            assert all(e.reason for e in closed)
            if side.closed is not None:
                assert side.receive(frame) == []
                break
        side.tick(1e9)  # never raises, whatever state it was left in
        side.data_to_send()


def test_hundreds_of_subscriptions_on_one_connection_are_all_taken():
    pub, sub = pair()
    streams = ["s%d" % (n,) for n in range(300)]
    assert all(sub.subscribe(stream) for stream in streams)
    seen_pub, seen_sub = exchange(pub, sub)
    assert [e.stream for e in seen_pub if isinstance(e, Subscribed)] == streams
    assert not any(isinstance(e, Closed) for e in seen_pub + seen_sub)


def test_promises_past_the_subscribers_limit_close_the_connection():
    sub = Subscriber(ChannelSettings(max_pushes=2))
    sub.start()
    sub.subscribe("cam")
    evil = hand_made_publisher(sub)
    for promised in (2, 4, 6):
        evil.push_stream(1, promised, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"x"),
                                       (b":path", b"/live/cam/720p/%d.m4s" % (promised,))])
    events = sub.receive(evil.data_to_send())
    assert isinstance(events[-1], Closed) and "more than 2 pushes" in events[-1].reason
