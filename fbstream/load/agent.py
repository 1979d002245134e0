"""
The load-generating agent (``twistd fbstream --role=loadgen``): one crowd of
simulated viewers at a time, started, watched and stopped by the controller
(``fbstream-load``) over a small JSON API:

- ``POST /v1/run`` ``{"pop": "http://HOST:PORT", "scenario": {...},
  "start_at": <Unix seconds>, "share": [i, n], "seed": <int>}``: run share
  ``i`` of ``n`` of the scenario's viewers against that PoP from
  ``start_at`` (every agent of a test starts at that common moment). 409 if
  a run is going on; 400 with the reason for anything it cannot run.
  Optional: ``"glb": "http://HOST:PORT"``, a global load balancer each
  viewer asks for its map first, and ``"sources": ["127.0.1.0/24", ...]``,
  the client networks the viewers come from (this host's addresses).
- ``GET /v1/run?from=K``: the run's state (``idle``, ``waiting``,
  ``running``, ``done``), its per-second lines from the K-th on, and, once
  done, its summary and histograms.
- ``DELETE /v1/run``: stop the run now (it is done, with what it saw).

With ``loadgen.secret_file`` set, every request carries
``Authorization: Bearer <secret>``; without one the agent only listens on
loopback.
"""

from __future__ import annotations

import hmac
import json
from typing import Any
from urllib.parse import urlsplit

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from fbstream.load.crowd import Crowd
from fbstream.load.scenario import Scenario, ScenarioError
from fbstream.load.viewer import Settings

#: A control request's body may take this much at most.
MAX_BODY = 256 * 1024
#: How far ahead a start may be asked for.
MAX_WAIT = 600.0
#: Client networks one run may come from.
MAX_SOURCES = 1024


class AgentResource(Resource):
    """``/v1/run``: see the module's description."""

    isLeaf = True
    log = Logger()

    def __init__(self, reactor: Any, name: str, secret: bytes | None, max_viewers: int) -> None:
        super().__init__()
        self.reactor = reactor
        self.name = name
        self.secret = secret
        self.max_viewers = max_viewers
        self.crowd: Crowd | None = None
        self.state = "idle"
        self.run: dict[str, Any] = {}
        self.summary: dict[str, Any] | None = None
        self._start: Any = None

    def render(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        if request.path != b"/v1/run":
            return self._answer(request, 404, {"error": "no such resource"})
        if self.secret is not None:
            given = request.getHeader(b"authorization") or b""
            if not hmac.compare_digest(given.encode() if isinstance(given, str) else given,
                                       b"Bearer " + self.secret):
                return self._answer(request, 401, {"error": "a wrong or missing bearer secret"})
        method = request.method
        if method == b"GET":
            return self._status(request)
        if method == b"POST":
            return self._begin(request)
        if method == b"DELETE":
            self._stop()
            return self._status(request)
        return self._answer(request, 405, {"error": "GET, POST or DELETE"})

    def _answer(self, request: Request, code: int, body: dict[str, Any]) -> bytes:
        request.setResponseCode(code)
        return json.dumps(body).encode() + b"\n"

    def _status(self, request: Request) -> bytes:
        try:
            args: dict[bytes, list[bytes]] = request.args or {}
            first = max(0, int((args.get(b"from") or [b"0"])[0]))
        except ValueError:
            return self._answer(request, 400, {"error": "from: a number"})
        crowd = self.crowd
        body: dict[str, Any] = {"agent": self.name, "state": self.state, "run": self.run,
                                "seconds": crowd.seconds[first:] if crowd is not None else [],
                                "viewers": len(crowd.watching) if crowd is not None else 0,
                                "now": self.reactor.seconds()}
        if self.summary is not None and crowd is not None:
            body["summary"] = self.summary
            body["histograms"] = {name: h.counts for name, h in crowd.total.items()}
            body["histograms"]["startup"] = crowd.startups().counts
        return self._answer(request, 200, body)

    def _begin(self, request: Request) -> bytes:
        if self.state in ("waiting", "running"):
            return self._answer(request, 409, {"error": "a run is going on: DELETE it first"})
        raw = request.content.read(MAX_BODY + 1) if request.content is not None else b""
        if len(raw) > MAX_BODY:
            return self._answer(request, 413, {"error": "over %d bytes" % (MAX_BODY,)})
        try:
            run = json.loads(raw)
            if not isinstance(run, dict):
                raise ValueError("a JSON object")
            pop = urlsplit(str(run.get("pop", "")))
            if pop.scheme != "http" or not pop.hostname:
                raise ValueError("pop: an http:// URL")
            index, of = run.get("share", [0, 1])
            if not (isinstance(index, int) and isinstance(of, int) and 0 <= index < of <= 10_000):
                raise ValueError("share: [i, n] with 0 <= i < n")
            scenario = Scenario.from_json(run.get("scenario", {})).share(index, of)
            if scenario.viewers > self.max_viewers:
                raise ValueError("this agent runs at most %d viewers (loadgen.max_viewers); its share is %d"
                                 % (self.max_viewers, scenario.viewers))
            now = self.reactor.seconds()
            start_at = float(run.get("start_at", now))
            if start_at > now + MAX_WAIT:
                raise ValueError("start_at: within %d s" % (MAX_WAIT,))
            seed = int(run.get("seed", 0))
            glb, sources = run.get("glb"), run.get("sources") or []
            if glb is not None and not isinstance(glb, str):
                raise ValueError("glb: an http:// URL")
            if not isinstance(sources, list) or len(sources) > MAX_SOURCES \
                    or not all(isinstance(n, str) for n in sources):
                raise ValueError("sources: a list of at most %d networks" % (MAX_SOURCES,))
            crowd = Crowd(self.reactor, pop.hostname, pop.port or 80, Settings(startup=scenario.startup),
                          seed=seed * 10_007 + index, glb=glb, sources=sources)
        except (ValueError, TypeError, ScenarioError) as e:
            return self._answer(request, 400, {"error": str(e)})
        self.crowd = crowd
        self.run = {"pop": run["pop"], "scenario": scenario.to_json(), "start_at": start_at, "share": [index, of]}
        self.summary = None
        self.state = "waiting"
        self._start = self.reactor.callLater(max(0.0, start_at - now), self._go, scenario)
        self.log.info("loadgen {name}: {n} viewers of {kind} against {pop} in {s:.1f} s", name=self.name,
                      n=scenario.viewers, kind=scenario.kind, pop=run["pop"], s=max(0.0, start_at - now))
        return self._answer(request, 202, {"agent": self.name, "state": self.state, "run": self.run})

    def _go(self, scenario: Scenario) -> None:
        self._start = None
        assert self.crowd is not None
        self.state = "running"
        self.crowd.run(scenario).addCallback(self._done)

    def _done(self, summary: dict[str, Any]) -> None:
        self.summary = summary
        self.state = "done"
        self.log.info("loadgen {name}: done: {summary}", name=self.name, summary=json.dumps(summary))

    def _stop(self) -> None:
        if self._start is not None and self._start.active():
            self._start.cancel()
            self._start = None
            self.state = "idle"
        elif self.state == "running" and self.crowd is not None:
            self.crowd.finish()
