"""
What a PoP worker forwards to the PoP (the live API, ``/metrics``) names
the viewer it is for: the PoP's live API sees the viewer's address, not the
worker's, whatever the viewer sent in the header that carries it.
"""

from __future__ import annotations

import json
from typing import Any, cast

import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Site

from fbstream.roles.services import FORWARDED_CLIENT, ForwardedRequest
from fbstream.roles.worker import _Forward

from .conftest import free_port

reactor = cast(Any, _reactor)


class Client(Resource):
    """The PoP's side: who the request is from."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return json.dumps({"client": request.getClientAddress().host, "path": request.path.decode()}).encode()


@pytest_twisted.inlineCallbacks
def test_the_pop_sees_the_viewer_a_worker_forwards_for_not_a_name_the_viewer_gave():
    pop_root = Resource()
    pop_root.putChild(b"api", Client())
    pop_site = Site(pop_root)
    pop_site.requestFactory = ForwardedRequest
    pop = reactor.listenTCP(0, pop_site, interface="127.0.0.1")
    worker_root = Resource()
    worker_root.putChild(b"api", _Forward("127.0.0.1", pop.getHost().port, b"/api"))
    worker_port = free_port()
    worker = reactor.listenTCP(worker_port, Site(worker_root), interface="127.0.0.1")
    try:
        url = b"http://127.0.0.1:%d/api/v1/live_videos" % (worker_port,)
        for forged in ([], [b"203.0.113.9"], [b"not an address"]):
            headers = Headers({FORWARDED_CLIENT: forged} if forged else {})
            response = yield Agent(reactor, bindAddress=("127.0.0.7", 0)).request(b"GET", url, headers)
            answer = json.loads((yield readBody(response)))
            assert answer == {"client": "127.0.0.7", "path": "/api/v1/live_videos"}, forged
        # Straight to the PoP's forwarding port, the header is what names the client (only workers reach it).
        direct = yield Agent(reactor).request(b"GET", b"http://127.0.0.1:%d/api/x" % (pop.getHost().port,),
                                              Headers({FORWARDED_CLIENT: [b"2001:db8::5"]}))
        assert json.loads((yield readBody(direct)))["client"] == "2001:db8::5"
    finally:
        yield worker.stopListening()
        yield pop.stopListening()
