"""
A full PoP's safety valve. The balancer's plans keep a PoP under its
capacity, but a map is seconds old and a player may come straight to a PoP
(a shared link, a player that ignores the map). So a PoP that carries its
capacity answers a new viewer's first request, a live stream's manifest
(``manifest.mpd`` or ``master.m3u8``) on a new connection, with a ``302`` to
the PoP the balancer named for the viewer's network, before any of the
PoP's HTTP sees it. Viewers already watching stay: their requests come on
the connections they hold (a player that reconnects for its next manifest
is taken for a new viewer, and sent on like one).

What the PoP knows comes back with each load report (the answer to
``POST /v1/load``): the PoP's viewers in all its processes, and the PoPs
under their capacity for each of its busiest networks (and for any other).
The last answer is kept: with the balancer gone, the PoP still sends its
overflow where the balancer last said there was room, and with no answer
yet it redirects nobody.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter
from twisted.logger import Logger

from fbstream.glb.balance import network_of

REDIRECTED = Counter("fbstream_pop_redirected_viewers",
                     "new viewers a full PoP sent to another PoP (its safety valve)")

#: A new viewer's first request: a live stream's manifest or HLS master playlist. What it
#: asked goes into the Location header: URI characters only (no CR, LF or control bytes).
_ENTRY = re.compile(rb"(?:GET|HEAD) (/live/[A-Za-z0-9._~%!$&'()*+,;=:@-]{1,256}/(?:manifest\.mpd|master\.m3u8)"
                    rb"(?:\?[!-~]{0,2048})?) HTTP/1\.[01]\r\n")
#: The most PoPs, and networks, an answer is taken with.
MAX_POPS = 256
MAX_NETWORKS = 10_000
#: A PoP's URL goes into a header: printable ASCII only.
POP_URL = re.compile(r"https?://[!-~]{1,300}")


class Valve:
    """
    :param capacity: the PoP's capacity, viewers (its ``glb.capacity``).
    :param connections: this process's open viewer connections, now.
    """

    log = Logger()

    def __init__(self, capacity: float, connections: Callable[[], int]) -> None:
        self.capacity = capacity
        self.connections = connections
        #: Viewers the PoP's other processes carried when the balancer last heard from them.
        self.others = 0.0
        self.maps: dict[str, list[str]] = {}
        self.spill: list[str] = []
        self.urls: dict[str, str] = {}
        #: Whether the last answer could not be used (said once, not each second).
        self.unusable = False

    def heard(self, answer: Any, reported: float) -> None:
        """The balancer's answer to a report of ``reported`` viewers (this process's)."""
        try:
            if not all(isinstance(answer[key], dict) for key in ("urls", "maps")) \
                    or not isinstance(answer["spill"], list):
                raise ValueError("urls and maps: objects; spill: a list")
            viewers = float(answer["viewers"])
            urls = {str(name): str(url).rstrip("/") for name, url in answer["urls"].items()}
            if len(urls) > MAX_POPS or not all(POP_URL.fullmatch(url) for url in urls.values()):
                raise ValueError("urls: at most %d http(s) URLs" % (MAX_POPS,))
            spill = [str(name) for name in answer["spill"] if name in urls]
            maps = answer["maps"]
            if len(maps) > MAX_NETWORKS:
                raise ValueError("maps: at most %d networks" % (MAX_NETWORKS,))
            maps = {str(network): [str(name) for name in pops if name in urls] for network, pops in maps.items()}
        except (KeyError, TypeError, ValueError) as e:
            if not self.unusable:
                self.log.warn("the balancer's answers to load reports cannot be used (an older balancer?): {why}; "
                              "this PoP redirects no one until they can", why=str(e)[:200])
            self.unusable = True
            return
        self.unusable = False
        self.others = max(0.0, viewers - reported)
        self.urls, self.spill, self.maps = urls, spill, maps

    def full(self) -> bool:
        return self.others + self.connections() > self.capacity

    def redirect(self, address: str | None, data: bytes) -> bytes | None:
        """
        The whole ``302`` answer to a new connection whose first bytes are
        ``data``, from ``address``; None to serve it here.
        """
        if not self.urls or not self.full():
            return None
        entry = _ENTRY.match(data)
        if entry is None:
            return None
        chosen = None
        if address is not None:
            try:
                chosen = self.maps.get(network_of(address))
            except ValueError:
                pass
        pops = chosen or self.spill
        if not pops:
            return None
        REDIRECTED.inc()
        location = self.urls[pops[0]].encode() + entry.group(1)
        return (b"HTTP/1.1 302 Found\r\nLocation: %s\r\nCache-Control: no-store\r\n"
                b"Access-Control-Allow-Origin: *\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % (location,))
