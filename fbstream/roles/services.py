"""
Building blocks every role is made of: the HTTP site's root with
``/metrics`` and its bounded requests, the role's service, and the routes of
relayed publishes and plays. :mod:`fbstream.roles.build` puts them together.
"""

from __future__ import annotations

import io
import ipaddress
import os
import re
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.web.http import combinedLogFormatter
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from fbstream import config as _config
from fbstream.cache.ring import HashRing
from fbstream.config import ConfigError, RoleConfig
from fbstream.live.hub import StreamHub
from fbstream.live.ingest import PublishRefused
from fbstream.live.login import Sessions
from fbstream.live.rtmp import RTMPServerSettings
from fbstream.live.tokens import peek_datacenter, token_from_query
from fbstream.metrics import ROLE_UP, metrics_resource


def http_root() -> Resource:
    root = Resource()
    root.putChild(b"metrics", metrics_resource())
    return root


def rtmp_settings(config: RoleConfig) -> RTMPServerSettings:
    return _config.settings(RTMPServerSettings, config, "rtmp")


#: Query parameters that carry a secret (a stream token, a one-time login).
_SECRET_PARAMETER = re.compile(r"\b((?:token|login)=)[^&\s\"]*")


def access_log_line(timestamp: str, request: Any) -> str:
    """The combined log format, with the secrets in URLs and referrers left out."""
    return _SECRET_PARAMETER.sub(r"\1-", combinedLogFormatter(timestamp, request))


class BoundedRequest(Request):
    """
    A request whose body may be at most ``max_body`` bytes, kept in memory:
    one that says it is longer is answered 413 before a byte of it is read,
    and a chunked one is cut off there. (twisted.web spools any body over
    100 KB to a temporary file, before authentication or routing.) None of
    our URLs takes more than a few KB.
    """

    max_body = 64 * 1024
    _refused = False
    _body_seen = 0
    content: Any

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()
        if length is not None and length > self.max_body:
            self._refuse()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._body_seen += len(data)
        if self._body_seen > self.max_body:
            self._refuse()
            return
        self.content.write(data)

    def _refuse(self) -> None:
        self._refused = True
        self.content = io.BytesIO()
        transport: Any = self.channel.transport
        requests = getattr(self.channel, "requests", [])
        if requests and requests[0] is self:  # nothing before it still being answered
            message = b"request bodies are limited to %d bytes\n" % (self.max_body,)
            transport.write(b"HTTP/1.1 413 Content Too Large\r\ncontent-type: text/plain\r\n"
                            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(message), message))
            transport.loseConnection()
        else:
            transport.abortConnection()


#: The viewer a PoP worker forwards a request for (its address), named by the worker.
FORWARDED_CLIENT = b"x-fbstream-client"


class ForwardedRequest(BoundedRequest):
    """
    A request a PoP worker forwarded to the PoP (the live API, on the PoP's
    loopback port for its workers): its client is the viewer the worker
    names in :data:`FORWARDED_CLIENT`, not the worker. The worker always
    sets it, over any a viewer sent.
    """

    def getClientAddress(self) -> Any:
        named = self.getHeader(FORWARDED_CLIENT)
        if named:
            try:
                ip = ipaddress.ip_address(named.decode("ascii"))  # bytes would be a packed address
            except (UnicodeDecodeError, ValueError):
                pass
            else:
                return (IPv4Address if ip.version == 4 else IPv6Address)("TCP", str(ip), 0)
        return super().getClientAddress()


class RoleService(MultiService):
    """One role: its listeners and helpers, with ``hub`` and ``site`` for tests."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role
        self.setName(role)
        self.hub: StreamHub | None = None
        self.site: Site | None = None
        self.encoder: Any = None
        self.broadcasts: Any = None
        self.caches: dict[str, Any] = {}
        #: The PoP's worker processes (``pop.workers`` above 1).
        self.workers: Any = None
        #: The global load balancer (the glb role).
        self.glb: Any = None

    def startService(self) -> None:
        ROLE_UP.labels(role=self.role).set(1)
        super().startService()

    def stopService(self) -> Any:
        ROLE_UP.labels(role=self.role).set(0)
        return super().stopService()


class Stop(Service):
    """Runs ``stop`` when the role stops."""

    def __init__(self, stop: Any) -> None:
        self.stop = stop

    def stopService(self) -> Any:
        super().stopService()
        return self.stop()


class LoginLink(Service):
    """
    Shows, once the role is up, the link that signs a browser in to the live
    API: on the process's standard error, the terminal of ``twistd -n``, and
    never in the log, which outlives the link's use.
    """

    def __init__(self, sessions: Sessions, base_url: str) -> None:
        self.sessions = sessions
        self.base_url = base_url

    def startService(self) -> None:
        super().startService()
        link = "%s/?login=%s" % (self.base_url, self.sessions.new_code())
        text = ("\nfbstream is running. To go live, open this link (it works once; it signs\n"
                "your browser in to the live API) and press Go live:\n\n    %s\n\n" % (link,))
        try:
            os.write(2, text.encode())
        except OSError:
            pass  # no standard error (daemonized): the API key is the way in


def pop_route(dc_proxies: list[str]) -> Any:
    table: dict[str, list[str]] = {}
    for entry in dc_proxies:
        dc, sep, endpoint = entry.partition("=")
        if not sep or not dc or not endpoint:
            raise ConfigError("relay.dc_proxies entry %r is not <datacenter>=<endpoint>" % (entry,))
        table.setdefault(dc, []).append(endpoint)

    def route(name: str, query: str) -> list[str]:
        token = token_from_query(query)
        if not token:
            raise PublishRefused("NetStream.Publish.BadName",
                                 "a stream token is required (publish to <stream id>?token=<token>)", "token")
        dc = peek_datacenter(token)
        if dc is None:
            raise PublishRefused("NetStream.Publish.BadName", "the stream token is malformed", "token")
        if dc not in table:
            raise PublishRefused("NetStream.Publish.BadName",
                                 "the stream token names data center %r, which this PoP does not serve" % (dc,),
                                 "token")
        return table[dc]

    return route


def pop_play_route(dc_proxies: list[str]) -> Any:
    """A player gives no token: every dc-proxy, in the configured order, is asked for the stream."""
    hops = [entry.partition("=")[2] for entry in dc_proxies]
    return lambda name: list(hops)


def ring_play_route(encoders: list[str], vnodes: int) -> Any:
    """The encoders in the order a publish of the stream tries them: its owner is the first that has it."""
    route = ring_route(encoders, vnodes)
    return lambda name: route(name, "")


def ring_route(encoders: list[str], vnodes: int) -> Any:
    if not encoders:
        raise ConfigError("relay.encoders is empty")
    ring = HashRing(encoders, vnodes=vnodes)

    def route(name: str, query: str) -> list[str]:
        return list(ring.walk(name.encode()))

    return route
