"""
The balancer's maps for the live API's callers: ``/v1/map?client=`` for
the balancer's holders only, and the asker that keeps each network's last
map for when the balancer cannot answer.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.web.resource import Resource

from fbstream.glb.balance import Balancer
from fbstream.glb.maps import MapAsker, parse_map
from fbstream.glb.service import GLB, V1Resource


class Maps(Resource):
    """A balancer's ``/v1/map``: an answer the test sets, the addresses asked for."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.code = 200
        self.body: Any = {"pops": [{"name": "pop2", "url": "http://pop2.example"}]}
        self.asked: list[bytes] = []
        self.authorization: list[bytes | None] = []

    def render_GET(self, request: Any) -> bytes:
        self.asked.append(request.args[b"client"][0])
        self.authorization.append(request.getHeader(b"authorization"))
        request.setResponseCode(self.code)
        return self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()


def result(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "not answered"
    return out[0]


def test_a_caller_gets_its_network_s_map_asked_for_its_address_with_the_secret():
    maps = Maps()
    asker = MapAsker(Clock(), "http://glb:8088/", b"s3cret", http=StubTreq(maps))
    assert result(asker.pops_for("10.1.2.3")) == [("pop2", "http://pop2.example")]
    assert maps.asked == [b"10.1.2.3"] and maps.authorization == [b"Bearer s3cret"]
    assert result(asker.pops_for("2001:db8::1")) == [("pop2", "http://pop2.example")]


def test_with_the_balancer_failing_a_network_gets_its_last_map_and_an_unknown_one_none():
    maps = Maps()
    asker = MapAsker(Clock(), "http://glb", None, http=StubTreq(maps))
    result(asker.pops_for("10.1.2.3"))
    for code, body in ((500, {"error": "x"}), (200, b"not json"), (200, {"pops": [{"name": "p", "url": "ftp://x"}]}),
                       (200, {"pops": "all"})):
        maps.code, maps.body = code, body
        # Another address of the same /24: its network's last map.
        assert result(asker.pops_for("10.1.2.200")) == [("pop2", "http://pop2.example")], body
        assert result(asker.pops_for("10.9.9.9")) == [], body
    assert asker.failing and asker.asking == 0


def test_the_networks_kept_are_bounded_and_the_questions_in_flight_too():
    maps = Maps()
    asker = MapAsker(Clock(), "http://glb", None, http=StubTreq(maps), max_networks=2)
    for address in ("10.0.1.1", "10.0.2.1", "10.0.3.1"):
        result(asker.pops_for(address))
    assert list(asker.last) == ["10.0.2.0/24", "10.0.3.0/24"] and asker.asking == 0
    # No answer comes: past max_asking, the last map answers at once; the
    # others get it once their timeout (over the whole answer) is up.
    clock = Clock()
    hanging = MapAsker(clock, "http://glb", None, http=_Hanging(), max_asking=2)
    hanging.last["10.0.1.0/24"] = [("pop1", "http://pop1")]
    pending = [hanging.pops_for("10.0.1.1"), hanging.pops_for("10.0.7.2")]
    assert result(hanging.pops_for("10.0.1.3")) == [("pop1", "http://pop1")]
    assert all(not d.called for d in pending) and hanging.asking == 2
    clock.advance(hanging.timeout)
    assert [result(d) for d in pending] == [[("pop1", "http://pop1")], []] and hanging.asking == 0
    assert result(hanging.pops_for("a name, not an address")) == []


def test_a_listing_places_no_one_it_gives_the_network_s_last_map():
    maps = Maps()
    asker = MapAsker(Clock(), "http://glb", None, http=StubTreq(maps))
    assert result(asker.pops_for("10.1.2.3", False)) == [] and maps.asked == []
    result(asker.pops_for("10.1.2.3"))
    assert result(asker.pops_for("10.1.2.4", False)) == [("pop2", "http://pop2.example")]
    assert maps.asked == [b"10.1.2.3"]


def test_a_balancer_url_treq_refuses_is_no_map_not_an_error():
    asker = MapAsker(Clock(), "no scheme at all", None, http=StubTreq(Maps()))
    assert result(asker.pops_for("10.1.2.3")) == [] and asker.asking == 0 and asker.failing


class _Hanging:
    def get(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        return Deferred()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["pops", "name", "url"]), inner,
                                                                max_size=3), max_leaves=12).map(
    lambda value: json.dumps(value).encode()))
def test_any_answer_is_a_map_or_a_clear_error(raw):
    try:
        pops = parse_map(raw)
    except ValueError:
        return
    assert all(isinstance(name, str) and url.startswith(("http://", "https://")) for name, url in pops)


def test_another_client_s_map_is_for_the_balancer_s_holders_only():
    clock = Clock()
    glb = GLB(clock, Balancer(), {"pop1": "http://pop1"}, pool=None)  # type: ignore[arg-type]
    http: Any = StubTreq(_Root(V1Resource(glb, b"s3cret", 5)))
    url = "http://glb/v1/map?client=10.1.2.3"
    assert result(http.get(url)).code == 401
    assert result(http.get(url, headers={b"authorization": b"Bearer wrong"})).code == 401
    answered = result(http.get(url, headers={b"authorization": b"Bearer s3cret"}))
    assert answered.code == 200 and json.loads(result(answered.content()))["network"] == "10.1.2.0/24"
    bad = result(http.get("http://glb/v1/map?client=nonsense", headers={b"authorization": b"Bearer s3cret"}))
    assert bad.code == 400


class _Root(Resource):
    def __init__(self, v1: Resource) -> None:
        super().__init__()
        self.putChild(b"v1", v1)
