"""
The global load balancer with three real PoPs on loopback: each PoP reports
its viewer connections every second; viewers of two client networks
(127.0.1.x and 127.0.2.x source addresses) ask the balancer for a map and
open a keep-alive connection to its first PoP, as a player does.
"""

from __future__ import annotations

import json
import os
from io import BytesIO
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.web.client import Agent, FileBodyProducer, readBody

from fbstream.config import load
from fbstream.roles.build import build_role

from .conftest import ROLES_REACTOR, ROOT, free_port, sleep
from .topology import stop_balancer

NEAR, FAR = "127.0.1", "127.0.2"
#: The PoPs' capacities in viewers; pop1 is the nearest to NEAR and the smallest.
CAPACITY = {"pop1": 40, "pop2": 400, "pop3": 400}


class Viewer(Protocol):
    """A player's keep-alive connection: one request (GET /time), then it stays open."""

    transport: Any
    factory: Any

    def connectionMade(self):
        self.transport.write(b"GET /time HTTP/1.1\r\nHost: pop\r\n\r\n")
        self.factory.viewer = self
        self.factory.connected.callback(self)

    def connectionLost(self, reason=None):
        self.factory.lost = True


class ViewerFactory(ClientFactory):
    protocol = Viewer

    def __init__(self):
        self.connected: defer.Deferred[Viewer] = defer.Deferred()
        self.lost = False
        self.viewer: Viewer | None = None

    def clientConnectionFailed(self, connector, reason):
        self.connected.errback(reason)


@pytest.fixture
def world(tmp_path):
    seed = tmp_path / "seed.toml"
    seed.write_text('["%s.0/24"]\npop1 = 5.0\npop2 = 20.0\npop3 = 40.0\n'
                    '["%s.0/24"]\npop1 = 40.0\npop2 = 20.0\npop3 = 5.0\n' % (NEAR, FAR))
    glb_port = free_port()
    pops = {name: free_port() for name in CAPACITY}
    glb = build_role(load("glb", None, [
        "http.listen=tcp:%d:interface=127.0.0.1" % (glb_port,),
        "glb.pops=%s" % (json.dumps(["%s=http://127.0.0.1:%d" % (n, p) for n, p in pops.items()]),),
        "glb.seed_file=%s" % (seed,),
    ])["glb"], ROLES_REACTOR)
    glb.startService()
    services = {}
    for name, port in pops.items():
        service = build_role(load("pop", os.path.join(ROOT, "conf", "pop.toml"), [
            "http.listen=tcp:%d:interface=127.0.0.1" % (port,),
            "http.max_connections_per_address=0",
            "rtmp.listen=[]", "relay.dc_proxies=[]", "pop.cache_listen=[]", "pop.workers=1",
            "glb.url=http://127.0.0.1:%d" % (glb_port,),
            "glb.name=%s" % (name,),
            "glb.capacity=%d" % (CAPACITY[name],),
        ])["pop"], ROLES_REACTOR)
        service.startService()
        services[name] = service
    yield glb, services, "http://127.0.0.1:%d" % (glb_port,), pops
    for service in services.values():
        pytest_twisted.blockon(defer.maybeDeferred(service.stopService))
    if glb.running:
        pytest_twisted.blockon(defer.maybeDeferred(glb.stopService))


def open_viewers(services):
    return {name: service.site.limits.open for name, service in services.items()}


@defer.inlineCallbacks
def ask(base, path, source):
    agent = Agent(reactor, bindAddress=(source, 0))
    response = yield agent.request(b"GET", (base + path).encode())
    body = yield readBody(response)
    return response, json.loads(body)


@defer.inlineCallbacks
def join(base, pops, source, viewers):
    """One viewer from ``source``: the map's first PoP, then a connection held open there."""
    _, answer = yield ask(base, "/v1/map", source)
    first = answer["pops"][0]["name"]
    factory = ViewerFactory()
    reactor.connectTCP("127.0.0.1", pops[first], factory, bindAddress=(source, 0))
    yield factory.connected
    viewers.append((first, factory))
    return first


@pytest_twisted.inlineCallbacks
def test_the_map_steering_and_state_say_what_the_balancer_saw(world):
    glb, services, base, pops = world
    yield sleep(2.5)  # every PoP has reported
    _, answer = yield ask(base, "/v1/map", NEAR + ".9")
    assert answer["network"] == NEAR + ".0/24"
    assert [p["name"] for p in answer["pops"]] == ["pop1", "pop2", "pop3"]
    assert answer["pops"][0]["url"] == "http://127.0.0.1:%d" % (pops["pop1"],)
    response, steering = yield ask(base, "/v1/steering", FAR + ".9")
    assert steering["PATHWAY-PRIORITY"] == ["pop3", "pop2", "pop1"] and steering["VERSION"] == 1
    assert response.headers.getRawHeaders(b"access-control-allow-origin") == [b"*"]
    # Viewers holding connections are the load each PoP reports.
    held = []
    for i in range(5):
        factory = ViewerFactory()
        reactor.connectTCP("127.0.0.1", pops["pop2"], factory, bindAddress=(FAR + ".%d" % (i + 1,), 0))
        held.append((yield factory.connected))
    yield sleep(2.5)
    _, state = yield ask(base, "/v1/state", NEAR + ".9")
    assert state["pops"]["pop1"]["capacity"] == CAPACITY["pop1"]
    assert state["pops"]["pop2"]["load"] == 5
    assert all(state["pops"][name]["alive"] for name in pops)
    response = yield Agent(reactor).request(b"GET", (base + "/metrics").encode())
    metrics = (yield readBody(response)).decode()
    assert 'fbstream_glb_pop_capacity_viewers{pop="pop1"} 40.0' in metrics
    assert 'fbstream_glb_pop_viewers{pop="pop2"} 5.0' in metrics
    assert "fbstream_glb_solve_seconds_count" in metrics
    for viewer in held:
        viewer.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_a_pop_that_stops_reporting_leaves_the_map(world):
    glb, services, base, pops = world
    yield sleep(2.5)
    yield defer.maybeDeferred(services["pop1"].stopService)
    yield sleep(glb.glb.balancer.down_after + 1.5)
    _, answer = yield ask(base, "/v1/map", NEAR + ".9")
    assert [p["name"] for p in answer["pops"]] == ["pop2", "pop3"]


@pytest_twisted.inlineCallbacks
def test_hostile_reports_and_measurements_get_a_clear_400(world):
    glb, services, base, pops = world
    agent = Agent(reactor, bindAddress=(NEAR + ".77", 0))

    @defer.inlineCallbacks
    def post(path, body):
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = yield agent.request(b"POST", (base + path).encode(), None, FileBodyProducer(BytesIO(raw)))
        return response.code, json.loads((yield readBody(response)) or b"{}")

    assert (yield post("/v1/load", {"pop": "nope", "viewers": 1, "capacity": 1}))[0] == 400
    code, answer = yield post("/v1/load", {"pop": "pop1", "viewers": -1, "capacity": 1})
    assert code == 400 and "viewers" in answer["error"]
    code, answer = yield post("/v1/load", {"pop": "pop1", "viewers": 1, "capacity": 1,
                                           "networks": {"x" * 5000: 1}})
    assert code == 400 and len(answer["error"]) < 200
    assert (yield post("/v1/load", b"[" * 5000))[0] == 400
    assert (yield post("/v1/rtt", {"rtt": {"pop1": "fast"}}))[0] == 400
    assert (yield post("/v1/rtt", {"rtt": {"pop9": 5}}))[0] == 400
    code, answer = yield post("/v1/rtt", {"rtt": {"pop1": 50.0, "pop3": 1.0}})
    assert code == 200 and answer["network"] == NEAR + ".0/24"
    # Measurements are rate-limited per address (a burst of 5, then 1 a second).
    codes = []
    for _ in range(8):
        codes.append((yield post("/v1/rtt", {"rtt": {"pop1": 50.0, "pop3": 1.0}}))[0])
    assert 429 in codes
    # The measurement moved NEAR's nearest PoP; the other PoPs still report.
    yield sleep(1.5)
    _, answer = yield ask(base, "/v1/map", NEAR + ".9")
    assert answer["pops"][0]["name"] == "pop3"
    assert all(glb.glb.balancer.pops[name].reported > 0 for name in pops)


@pytest_twisted.inlineCallbacks
def test_the_live_api_s_map_for_a_caller_and_its_last_map_once_the_balancer_is_gone(world):
    from fbstream.glb.maps import MapAsker

    glb, services, base, pops = world
    yield sleep(2.5)  # every PoP has reported
    asker = MapAsker(reactor, base, None)
    near = yield asker.pops_for(NEAR + ".9")
    assert near == [(name, "http://127.0.0.1:%d" % (pops[name],)) for name in ("pop1", "pop2", "pop3")]
    assert (yield asker.pops_for(FAR + ".9"))[0][0] == "pop3"
    # An address the balancer cannot place is refused, and the caller gets no map.
    response, answer = yield ask(base, "/v1/map?client=not-an-address", NEAR + ".9")
    assert response.code == 400 and "network" in answer["error"]
    # The balancer gone: a caller of a network asked before gets its last map, others none.
    yield stop_balancer(glb)
    assert (yield asker.pops_for(NEAR + ".10")) == near
    assert (yield asker.pops_for("127.0.3.1")) == []
    assert asker.failing
