"""
The relay of one publish to the next hop (PoP to dc-proxy, dc-proxy to
encoder), message for message.

The broadcaster's publish is held until the next hop answers: it gets
``NetStream.Publish.Start`` only once the whole path behind has accepted, and
an error status from any hop (a bad token at the encoder, say) comes back to
it as it was. Hops are tried in the order the route gives; one that cannot be
reached, or answers with a code in ``retry_codes``, passes the publish to the
next. Afterwards, an error status from the next hop or the loss of its
connection stops the broadcaster's publish with the reason, so it reconnects.

Bounded: the next hop's transport is the sink's producer target, so when its
write buffer fills the broadcaster's connection stops being read (TCP then
slows the broadcaster), and resumes when it drains.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from fbstream.live.ingest import IIngest, ISink, PublishRefused
from fbstream.live.rtmp import RTMPClientProtocol, RTMPStatusError
from fbstream.media import IPublisher, MediaMessage
from fbstream.metrics import RELAY_HOP_FAILURES, RELAY_PAUSES, RELAY_SESSIONS
from fbstream.reactors import IReactorClients
from fbstream.rtmp.connection import StatusReceived

#: route(name, query) -> the next hops' endpoint strings, in the order to try.
Route = Callable[[str, str], list[str]]


@implementer(ISink, IPushProducer)
class RelaySink:
    log = Logger()

    def __init__(self, client: RTMPClientProtocol, stream_id: int, name: str, full_name: str,
                 publisher: IPublisher, hop: str, role: str) -> None:
        self.client = client
        self.stream_id = stream_id
        self.name = name
        self.full_name = full_name
        self.publisher = publisher
        self.hop = hop
        self.role = role
        self.closed = False
        self.paused = False
        client.on_status = self._status
        client.lost.addCallback(self._lost)
        client.transport.registerProducer(self, True)
        RELAY_SESSIONS.labels(role=role).inc()

    # Back-pressure from the next hop's transport ------------------------------

    def pauseProducing(self) -> None:
        if not self.paused and not self.closed:
            self.paused = True
            RELAY_PAUSES.labels(role=self.role).inc()
            self.publisher.pause_reading()  # type: ignore[attr-defined]

    def resumeProducing(self) -> None:
        if self.paused and not self.closed:
            self.paused = False
            self.publisher.resume_reading()  # type: ignore[attr-defined]

    def stopProducing(self) -> None:
        pass

    # ISink ------------------------------------------------------------------

    def media(self, message: MediaMessage) -> None:
        if not self.closed:
            self.client.send_media(self.stream_id, message)

    def set_metadata(self, message: MediaMessage, values: dict[str, object]) -> None:
        self.media(message)

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self._end()
        self.client.unpublish(self.stream_id, self.full_name)
        self.client.transport.loseConnection()

    # The next hop -----------------------------------------------------------

    def _end(self) -> None:
        self.closed = True
        RELAY_SESSIONS.labels(role=self.role).dec()
        if self.paused:
            self.paused = False
            self.publisher.resume_reading()  # type: ignore[attr-defined]

    def _status(self, status: StatusReceived) -> None:
        if status.level == "error" and not self.closed:
            self.log.info("{hop} stopped {name}: {description}", hop=self.hop, name=self.name,
                          description=status.description)
            self._end()
            self.client.transport.loseConnection()
            self.publisher.stop(status.description)

    def _lost(self, _: Any) -> None:
        if not self.closed:
            self._end()
            self.log.warn("lost the relay of {name} to {hop}", name=self.name, hop=self.hop)
            self.publisher.stop("the connection to the next hop was lost")


@implementer(IIngest)
class RelayIngest:
    log = Logger()

    def __init__(self, reactor: IReactorClients, route: Route, app: str, role: str,
                 connect_timeout: float = 5.0, publish_timeout: float = 30.0,
                 retry_codes: frozenset[str] = frozenset()) -> None:
        self.reactor = reactor
        self.route = route
        self.app = app
        self.role = role
        self.connect_timeout = connect_timeout
        self.publish_timeout = publish_timeout
        self.retry_codes = retry_codes

    def open(self, name: str, query: str, publisher: IPublisher) -> Deferred[Any]:
        try:
            hops = self.route(name, query)
        except PublishRefused as e:
            d: Deferred[Any] = Deferred()
            d.errback(e)
            return d
        return self._relay(hops, name, query, publisher)

    @inlineCallbacks
    def _relay(self, hops: list[str], name: str, query: str, publisher: IPublisher) -> Any:
        full = name + ("?" + query if query else "")
        last: Any = None
        for hop in hops:
            client = RTMPClientProtocol(self.app, "rtmp://fbstream-relay/%s" % (self.app,), self.reactor)
            try:
                connecting = connectProtocol(clientFromString(self.reactor, hop), client)
                yield connecting.addTimeout(self.connect_timeout, self.reactor)
                yield client.ready.addTimeout(self.connect_timeout, self.reactor)
                sid = yield client.create_stream().addTimeout(self.connect_timeout, self.reactor)
                yield client.publish(sid, full).addTimeout(self.publish_timeout, self.reactor)
            except RTMPStatusError as e:
                _drop(client)
                if e.code in self.retry_codes:
                    self.log.info("{hop} passed {name} on: {e}", hop=hop, name=name, e=e.description)
                    last = e
                    continue
                raise PublishRefused(e.code or "NetStream.Publish.Failed", e.description, "upstream") from None
            except CancelledError:
                _drop(client)
                raise
            except Exception as e:
                _drop(client)
                RELAY_HOP_FAILURES.labels(role=self.role).inc()
                self.log.warn("relaying {name} to {hop} failed: {e}", name=name, hop=hop, e=repr(e))
                last = e
                continue
            self.log.info("relaying {name} to {hop}", name=name, hop=hop)
            return RelaySink(client, sid, name, full, publisher, hop, self.role)
        if isinstance(last, RTMPStatusError):
            raise PublishRefused(last.code, last.description, "upstream")
        raise PublishRefused("NetStream.Publish.Failed",
                             "no next hop could take the stream (%s)" % (last or "none configured",),
                             "no-upstream")


def _drop(client: RTMPClientProtocol) -> None:
    transport = getattr(client, "transport", None)
    if transport is not None:
        transport.abortConnection()
