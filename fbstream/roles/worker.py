"""
One worker process of a PoP (``python -m fbstream.roles.worker``, started by
:class:`fbstream.roles.workers.WorkerPool`, never by hand): the viewers'
site on the listening sockets it inherited, with its own proxy layer in
front of the PoP's cache layer, the page, and the rest forwarded to the PoP.

What it is given comes in ``$FBSTREAM_WORKER`` (JSON: its number, the PoP's
settings, the inherited sockets, the PoP's forwarding port); its metrics go
to ``$PROMETHEUS_MULTIPROC_DIR``, which the PoP reads; its log lines go to
standard output, which the PoP logs. It stops when told to (SIGTERM) or when
its standard input closes: the PoP is gone.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, cast

from twisted.application.service import MultiService
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, formatEvent, globalLogBeginner
from twisted.python.failure import Failure
from twisted.web.proxy import ReverseProxyResource
from twisted.web.resource import Resource

from fbstream.config import RoleConfig
from fbstream.roles.services import FORWARDED_CLIENT

#: Seconds between updates of the worker's CPU counter.
CPU_INTERVAL = 1.0


class _ParentGone(Protocol):
    """Standard input: the PoP never writes to it, and when it closes the PoP has gone."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.reactor.running:
            self.reactor.stop()


def _log_to_stdout() -> None:
    """Log lines, bare (the PoP adds the time and the worker's number), to standard output."""
    def observe(event: dict[str, Any]) -> None:
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text += "\n" + failure.getTraceback()
        try:
            sys.stdout.write(text.replace("\n", "\n  ") + "\n")
            sys.stdout.flush()
        except OSError:
            pass

    globalLogBeginner.beginLoggingTo([cast(ILogObserver, observe)], redirectStandardIO=False)


class _Forward(ReverseProxyResource):
    """Forwarded to the PoP, naming the viewer it is for (the PoP's live API places it by its network)."""

    def render(self, request: Any) -> Any:
        host = getattr(request.getClientAddress(), "host", None)
        request.requestHeaders.setRawHeaders(FORWARDED_CLIENT, [host.encode() if isinstance(host, str) else b""])
        return super().render(request)

    def getChild(self, path: bytes, request: Any) -> Any:
        child = super().getChild(path, request)
        return _Forward(child.host, child.port, child.path, child.reactor)


def serve(reactor: Any, spec: dict[str, Any]) -> MultiService:
    """The worker's service: the viewers' site on the inherited sockets."""
    from prometheus_client import Counter

    from fbstream.cache.service import build_proxy_layer, viewer_posts
    from fbstream.roles.build import bounded_site, load_reporter

    config = RoleConfig("pop", spec["config"])
    number = str(spec["number"])
    service = MultiService()
    root = Resource()
    proxy = build_proxy_layer(service, config, reactor, root)
    for name in (b"api", b"metrics"):
        root.putChild(name, _Forward("127.0.0.1", spec["forward_port"], b"/" + name))
    viewer_posts(service, config, reactor, root, proxy)  # here, where each viewer's address is known
    factory = bounded_site(config, reactor, root, "%s-http" % (config.role,), proxy)
    for fd, family in spec["sockets"]:
        reactor.adoptStreamPort(fd, family, factory)
        os.close(fd)  # adopted as a copy
    if config["glb.url"]:
        load_reporter(config, reactor, spec["number"], factory, proxy).setServiceParent(service)

    cpu = Counter("fbstream_pop_worker_cpu_seconds", "CPU seconds each PoP worker process used", ["worker"])
    worker_cpu = cpu.labels(worker=number)
    last = [0.0]

    def count_cpu() -> None:
        times = os.times()
        used = times.user + times.system
        worker_cpu.inc(max(0.0, used - last[0]))
        last[0] = used

    LoopingCall(count_cpu).start(CPU_INTERVAL)
    return service


def main() -> None:
    from twisted.internet import reactor, stdio

    spec = json.loads(os.environ["FBSTREAM_WORKER"])
    _log_to_stdout()
    cast(Any, stdio.StandardIO)(_ParentGone(reactor), stdin=0, stdout=os.open(os.devnull, os.O_WRONLY))
    service = serve(reactor, spec)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
