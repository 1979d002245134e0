"""
GETs from the next tier: a twisted.web ``Agent`` with a persistent connection
pool, whose hosts are endpoint strings (``tcp:host:port``, ``ssl:...``,
``unix:...``). With several hosts, paths are sharded over them by consistent
hashing and a host that cannot be reached is passed over for the next one.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.error import ConnectError, ConnectionRefusedError, DNSLookupError
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from fbstream.cache.ring import HashRing
from fbstream.reactors import IReactorClients


@implementer(IAgentEndpointFactory)
class _Endpoints:
    def __init__(self, reactor: IReactorClients, descriptions: list[str]) -> None:
        self.reactor = reactor
        self.descriptions = descriptions

    def endpointForURI(self, uri: Any) -> Any:
        index = int(uri.host.decode()[len("upstream"):])
        return clientFromString(self.reactor, self.descriptions[index])


class Upstreams:
    def __init__(self, reactor: IReactorClients, descriptions: list[str], connections_per_host: int = 32,
                 tier: str = "") -> None:
        if not descriptions:
            raise ValueError("no upstream hosts configured")
        # The tier asking names itself, so the next tier's access log says
        # which cache each fetch came from.
        self.headers = Headers({b"user-agent": [b"fbstream-cache (%s)" % (tier.encode(),) if tier
                                                else b"fbstream-cache"]})
        self.reactor = reactor
        self.descriptions = list(descriptions)
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = connections_per_host
        self.pool.retryAutomatically = False
        self.agent = Agent.usingEndpointFactory(reactor, _Endpoints(reactor, self.descriptions), pool=self.pool)
        self.ring = HashRing(list(range(len(self.descriptions))), self.descriptions)

    def get(self, path: bytes) -> Deferred[Any]:
        """
        GET ``path`` from its host, falling over to the next on a connection
        error, and once on a connection lost before any answer.
        """
        hosts = list(self.ring.walk(path))
        cancelled: list[bool] = []

        def cancel(_: Deferred[Any]) -> None:
            cancelled.append(True)
            attempt_d[0].cancel()

        result: Deferred[Any] = Deferred(cancel)
        attempt_d: list[Deferred[Any]] = []

        def attempt(i: int) -> None:
            d = self.agent.request(b"GET", b"http://upstream%d%s" % (hosts[i], path), self.headers)
            attempt_d[:] = [d]
            d.addCallbacks(result.callback, failed, errbackArgs=(i,))

        def failed(failure: Any, i: int) -> None:
            if result.called:
                return
            if failure.check(ConnectError, ConnectionRefusedError, DNSLookupError) and i + 1 < len(hosts):
                attempt(i + 1)
            elif failure.check(ResponseNeverReceived, RequestTransmissionFailed) and not retried and not cancelled:
                # Lost before any answer: a kept-alive connection whose host
                # died (or closed it) since its last use. A GET is safe to
                # send again: once, to the next host (the same one, on a new
                # connection, if there is no other).
                retried.append(i)
                attempt((i + 1) % len(hosts))
            else:
                result.errback(failure)

        retried: list[int] = []
        attempt(0)
        return result

    def post(self, path: bytes, body: bytes) -> Deferred[Any]:
        """
        POST ``body`` (JSON) to ``path``'s host, falling over to the next
        only where it cannot have arrived (no connection); fires with the
        response (its body unread).
        """
        hosts = list(self.ring.walk(path))
        headers = self.headers.copy()
        headers.setRawHeaders(b"content-type", [b"application/json"])

        def attempt(i: int) -> Deferred[Any]:
            d = self.agent.request(b"POST", b"http://upstream%d%s" % (hosts[i], path), headers,
                                   FileBodyProducer(BytesIO(body)))

            def failed(failure: Any) -> Any:
                if failure.check(ConnectError, ConnectionRefusedError, DNSLookupError) and i + 1 < len(hosts):
                    return attempt(i + 1)
                return failure

            return d.addErrback(failed)

        return attempt(0)

    def close(self) -> Deferred[Any]:
        return self.pool.closeCachedConnections()
