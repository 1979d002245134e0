"""A full PoP's safety valve: what the balancer tells it, and which requests it redirects."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fbstream.glb.balance import Balancer, SeedMap
from fbstream.glb.valve import Valve

NEAR, FAR = "127.0.1.0/24", "127.0.2.0/24"
SEED = SeedMap.parse({NEAR: {"a": 5, "b": 20, "c": 40}, FAR: {"a": 40, "b": 20, "c": 5}})
URLS = {"b": "http://pop-b.example:8080", "c": "http://pop-c.example"}
MPD = b"GET /live/s1/manifest.mpd HTTP/1.1\r\nHost: a\r\n\r\n"


def test_a_full_pop_is_told_the_other_pops_with_room_by_distance_and_by_room():
    balancer = Balancer(seed=SEED)
    balancer.report(0, "a", 100, 100)
    balancer.report(0, "b", 100, 60)
    balancer.report(0, "c", 100, 10)
    maps, spill = balancer.elsewhere("a", [NEAR, FAR], 0)
    assert maps == {NEAR: ["b", "c"], FAR: ["c", "b"]}
    assert spill == ["c", "b"]  # the most room first
    balancer.report(0, "b", 100, 100)  # full too: no longer offered
    maps, spill = balancer.elsewhere("a", [NEAR], 0)
    assert maps == {NEAR: ["c"]} and spill == ["c"]
    assert balancer.elsewhere("a", [NEAR], 10) == ({NEAR: []}, [])  # every PoP down


def valve(open_here, others, maps=None, spill=("c", "b"), capacity=10):
    connections = [open_here]
    v = Valve(capacity, lambda: connections[0])
    v.heard({"viewers": others + 3, "urls": URLS, "maps": maps or {NEAR: ["b", "c"]}, "spill": list(spill)}, 3)
    return v, connections


def test_a_new_viewer_of_a_full_pop_is_sent_to_its_network_s_choice():
    v, _ = valve(open_here=6, others=5)  # 11 of 10
    answer = v.redirect("127.0.1.9", MPD)
    assert answer is not None and answer.startswith(b"HTTP/1.1 302 Found\r\n")
    assert b"\r\nLocation: http://pop-b.example:8080/live/s1/manifest.mpd\r\n" in answer
    assert b"\r\nContent-Length: 0\r\n" in answer and answer.endswith(b"\r\n\r\n")
    # A network the balancer named nothing for: the PoP with the most room.
    hls = b"GET /live/s1/master.m3u8?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"
    assert b"Location: http://pop-c.example/live/s1/master.m3u8?x=1\r\n" in v.redirect("10.0.0.1", hls)


def test_viewers_already_watching_and_a_pop_with_room_are_left_alone():
    v, connections = valve(open_here=5, others=5)  # 10 of 10: not over
    assert v.redirect("127.0.1.9", MPD) is None
    connections[0] = 6
    for later in (b"GET /live/s1/1080p/12.m4s HTTP/1.1\r\n\r\n", b"GET /live/s1/720p/playlist.m3u8 HTTP/1.1\r\n\r\n",
                  b"POST /live/s1/manifest.mpd HTTP/1.1\r\n\r\n", b"GET /metrics HTTP/1.1\r\n\r\n", b"GET /live/s1/man"):
        assert v.redirect("127.0.1.9", later) is None
    assert v.redirect("127.0.1.9", MPD) is not None


def test_with_no_answer_yet_or_nowhere_with_room_the_pop_serves_its_viewers_itself():
    fresh = Valve(1, lambda: 100)
    assert fresh.redirect("127.0.1.9", MPD) is None
    v, _ = valve(open_here=20, others=0, maps={NEAR: []}, spill=())
    assert v.redirect("127.0.1.9", MPD) is None


def test_a_broken_answer_is_ignored_and_the_last_good_one_kept():
    v, _ = valve(open_here=20, others=0)
    broken: object
    for broken in (None, [], {"viewers": "x"}, {"viewers": 1, "urls": {"b": "javascript:x"}, "maps": {}, "spill": []},
                   {"viewers": 1, "urls": {"b": "http://b\r\nSet-Cookie: x"}, "maps": {}, "spill": []},
                   {"viewers": 1, "urls": URLS, "maps": [], "spill": []}):
        v.heard(broken, 0)
    assert b"pop-b.example" in v.redirect("127.0.1.9", MPD)


@given(st.binary(max_size=300), st.text(max_size=40))
def test_any_first_bytes_and_address_are_served_or_redirected_never_an_error(data, address):
    v, _ = valve(open_here=20, others=0)
    answer = v.redirect(address, data)
    assert answer is None or answer.startswith(b"HTTP/1.1 302 Found\r\n")


@given(st.binary(max_size=120), st.binary(max_size=120))
def test_what_a_viewer_asked_never_puts_anything_but_uri_characters_in_the_location(name, query):
    v, _ = valve(open_here=20, others=0)
    data = b"GET /live/" + name + b"/manifest.mpd?" + query + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    answer = v.redirect("127.0.1.9", data)
    if answer is not None:
        location = answer.split(b"\r\nLocation: ", 1)[1].split(b"\r\n", 1)[0]
        assert all(0x21 <= byte <= 0x7E for byte in location), location


def test_a_request_line_smuggling_a_header_is_served_here_not_redirected():
    v, _ = valve(open_here=20, others=0)
    assert v.redirect("127.0.1.9", b"GET /live/x\r\nSet-Cookie:a=b/manifest.mpd HTTP/1.1\r\n\r\n") is None
