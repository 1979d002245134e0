"""
The balancer's map for the live API's callers.

A viewer's app asks the live API (at a PoP) for a live video, and the
answer's playback URLs should name the PoP the balancer puts first for the
viewer's network, as the page's own map does. The API asks ``GET
/v1/map?client=<address>`` for each call that shows a video (each answer
places a viewer, as a player's map does), with a short timeout over the
whole answer: the API answers whether or not the balancer does. A listing
of videos places no one: it gives the network's last map.

The last map of each network is kept, for as many networks as
:data:`MAX_NETWORKS`, least recently asked forgotten first: with the
balancer gone or slow, a caller gets its network's last map, and with
none, the PoP's own playback URL.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any
from urllib.parse import quote

from treq.client import HTTPClient
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool

from fbstream.glb.balance import network_of
from fbstream.glb.valve import POP_URL

#: Networks whose last map is kept.
MAX_NETWORKS = 10_000
#: Questions to the balancer in flight at once; past them, the last map answers.
MAX_ASKING = 256
#: The most PoPs a map is taken with.
MAX_POPS = 256


def parse_map(raw: bytes) -> list[tuple[str, str]]:
    """A ``/v1/map`` answer's PoPs, best first, as (name, base URL); ValueError if it is not one."""
    answer = json.loads(raw)
    if not isinstance(answer, dict) or not isinstance(answer.get("pops"), list):
        raise ValueError("no list of pops")
    pops = []
    for pop in answer["pops"][:MAX_POPS]:
        if not isinstance(pop, dict) or not isinstance(pop.get("name"), str) or not isinstance(pop.get("url"), str) \
                or not POP_URL.fullmatch(pop["url"]):
            raise ValueError("a pop is not {name, url} with an http(s) URL")
        pops.append((pop["name"], pop["url"].rstrip("/")))
    return pops


class MapAsker:
    """
    ``pops_for(address)``: the PoPs for a client, best first (empty when
    neither the balancer nor a last map names any).

    :param url: the balancer's base URL (the PoP's ``glb.url``).
    :param secret: its bearer secret, if it has one.
    :param http: a :class:`treq.client.HTTPClient` (or ``StubTreq``).
    """

    log = Logger()

    def __init__(self, reactor: Any, url: str, secret: bytes | None, timeout: float = 1.0, http: Any = None,
                 max_networks: int = MAX_NETWORKS, max_asking: int = MAX_ASKING) -> None:
        self.reactor = reactor
        self.url = url.rstrip("/") + "/v1/map"
        self.headers: dict[bytes | str, bytes | str] = (
            {b"authorization": b"Bearer " + secret} if secret is not None else {})
        self.timeout = timeout
        self.pool: HTTPConnectionPool | None = None
        if http is None:
            self.pool = HTTPConnectionPool(reactor)
            http = HTTPClient(Agent(reactor, connectTimeout=timeout, pool=self.pool))
        self.http = http
        self.max_networks = max_networks
        self.max_asking = max_asking
        self.last: OrderedDict[str, list[tuple[str, str]]] = OrderedDict()
        self.asking = 0
        #: Whether the last question failed (said once, not each call).
        self.failing = False

    def pops_for(self, address: str, ask: bool = True) -> Deferred[list[tuple[str, str]]]:
        """
        The balancer's answer for a viewer at ``address`` (which places it),
        or, if it cannot give one in time, or with ``ask`` false, its
        network's last map.
        """
        try:
            network = network_of(address)
        except ValueError:
            return succeed([])  # not an IP address (a UNIX socket): the PoP's own URL
        if not ask or self.asking >= self.max_asking:
            return succeed(self._last(network))
        self.asking += 1
        d: Deferred[Any] = maybeDeferred(self.http.get, "%s?client=%s" % (self.url, quote(address, safe="")),
                                         headers=self.headers)
        d.addCallback(self._answered)
        # The whole answer within the timeout, its body too (treq's own
        # timeout ends at the response's head).
        timer = self.reactor.callLater(self.timeout, d.cancel)

        def done(result: Any) -> Any:
            self.asking -= 1
            if timer.active():
                timer.cancel()
            return result
        d.addBoth(done)
        d.addCallbacks(lambda pops: self._got(network, pops), lambda failure: self._failed(network, failure))
        return d

    def close(self) -> Deferred[None]:
        """Close the connections kept to the balancer (the PoP is stopping)."""
        return self.pool.closeCachedConnections() if self.pool is not None else succeed(None)

    def _answered(self, response: Any) -> Deferred[list[tuple[str, str]]]:
        body: Deferred[bytes] = response.content()
        code = response.code

        def read(raw: bytes) -> list[tuple[str, str]]:
            if code != 200:
                raise ValueError("%d %s" % (code, raw[:200].decode("utf-8", "replace").strip()))
            return parse_map(raw)
        return body.addCallback(read)

    def _got(self, network: str, pops: list[tuple[str, str]]) -> list[tuple[str, str]]:
        if self.failing:
            self.log.info("the live API has the balancer's maps from {url} again", url=self.url)
            self.failing = False
        if pops:
            self.last[network] = pops
            self.last.move_to_end(network)
            while len(self.last) > self.max_networks:
                self.last.popitem(last=False)
        return pops or self._last(network)

    def _failed(self, network: str, failure: Any) -> list[tuple[str, str]]:
        if not self.failing:
            self.log.warn("the live API has no map from the balancer at {url}: {why} (giving each network its "
                          "last map)", url=self.url, why=failure.getErrorMessage())
            self.failing = True
        return self._last(network)

    def _last(self, network: str) -> list[tuple[str, str]]:
        pops = self.last.get(network)
        if pops is None:
            return []
        self.last.move_to_end(network)
        return pops
