"""
What a listener allows one client before any protocol sees it: at most so
many connections in all and from one address, and, for HTTP, the whole of a
request's head within a deadline that a trickle of bytes does not extend
(slowloris: thousands of connections each sending a header byte at a time
held every file descriptor, and viewers, archive writes and state files
failed for want of one).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter
from twisted.internet.interfaces import IProtocolFactory, IReactorTime
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

REFUSED = Counter("fbstream_connections_refused",
                  "Connections closed at once: the listener's or the client address's limit", ["listener"])
HEAD_TIMEOUTS = Counter("fbstream_http_head_timeouts",
                        "HTTP connections closed for not sending a request's head in time", ["listener"])

_HEAD_END = b"\r\n\r\n"


class _Limited(ProtocolWrapper):
    factory: ConnectionLimits

    def __init__(self, factory: ConnectionLimits, wrapped: Any, address: str | None) -> None:
        super().__init__(factory, wrapped)  # type: ignore[arg-type]
        self.address = address
        self._deadline: Any = None
        self._tail = b""  # the last bytes seen, for a head end split across reads
        self._first = True

    def connectionMade(self) -> None:
        self._start_deadline()
        super().connectionMade()

    def _start_deadline(self) -> None:
        timeout = self.factory.head_timeout
        if timeout and self._deadline is None:
            self._deadline = self.factory.reactor.callLater(timeout, self._too_slow)

    def _too_slow(self) -> None:
        self._deadline = None
        HEAD_TIMEOUTS.labels(listener=self.factory.name).inc()
        transport: Any = self.transport
        transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._first:
            self._first = False
            valve = self.factory.valve
            redirect = valve.redirect(self.address, data) if valve is not None else None
            if redirect is not None:
                transport: Any = self.transport
                transport.write(redirect)
                transport.loseConnection()
                return
        if self.factory.head_timeout:
            seen = self._tail + data
            if _HEAD_END in seen:
                # A head is complete: its deadline is met; what follows it
                # (a body, the next request) starts the next one.
                if self._deadline is not None and self._deadline.active():
                    self._deadline.cancel()
                self._deadline = None
                if not seen.endswith(_HEAD_END):
                    self._start_deadline()
            else:
                self._start_deadline()
            self._tail = seen[-3:]
        super().dataReceived(data)

    def connectionLost(self, reason: Any = None) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        super().connectionLost(reason)


class ConnectionLimits(WrappingFactory):  # type: ignore[type-arg]
    """
    Wraps a listener's factory: ``max_connections`` open at once,
    ``max_per_address`` of them from one client address (0: no such limit),
    and with ``head_timeout`` (seconds; 0: none), each HTTP request head due
    whole that long after its first byte (after the connection opens, for
    the first).
    """

    protocol = _Limited  # type: ignore[assignment]
    log = Logger()

    def __init__(self, wrapped: IProtocolFactory, reactor: IReactorTime, name: str, max_connections: int,
                 max_per_address: int = 0, head_timeout: float = 0.0) -> None:
        super().__init__(wrapped)
        self.reactor = reactor
        self.name = name
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.head_timeout = head_timeout
        self.by_address: dict[str, int] = {}
        self.open = 0
        #: The web site behind it, if it serves one (what the role's tests look at).
        self.site: Any = None
        #: A full PoP's safety valve (:class:`fbstream.glb.valve.Valve`): it
        #: may answer a connection's first request itself, with a redirect.
        self.valve: Any = None

    def buildProtocol(self, addr: Any) -> Any:
        address = getattr(addr, "host", None)
        if self.open >= self.max_connections or (
                address is not None and self.max_per_address
                and self.by_address.get(address, 0) >= self.max_per_address):
            REFUSED.labels(listener=self.name).inc()
            return None
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(self, wrapped, address)

    def registerProtocol(self, p: Any) -> None:
        super().registerProtocol(p)
        self.open += 1
        address = getattr(p, "address", None)
        if address is not None:
            self.by_address[address] = self.by_address.get(address, 0) + 1

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        self.open -= 1
        address = getattr(p, "address", None)
        if address is not None:
            left = self.by_address[address] - 1
            if left:
                self.by_address[address] = left
            else:
                del self.by_address[address]
