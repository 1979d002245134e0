"""
The PoP's web page: the live and archived videos, played with dash.js (hls.js
as the fallback). The page ships in this package; the players come from the
npm registry (``npm install --prefix web``) and are served from there.
"""

from __future__ import annotations

import html
import os
from importlib import resources

from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.static import File

#: The files /static/ serves, and where they are in node_modules.
PLAYER_FILES = {
    b"dash.all.min.js": ("dashjs", "dist", "modern", "umd", "dash.all.min.js"),
    b"hls.min.js": ("hls.js", "dist", "hls.min.js"),
}


class PageResource(Resource):
    """
    The page; with ``glb`` (the global load balancer's URL as players reach
    it), the page asks it which PoP to play from and measures its round
    trips to the PoPs for it.
    """

    isLeaf = True

    def __init__(self, glb: str = "") -> None:
        super().__init__()
        page = resources.files(__name__).joinpath("index.html").read_bytes()
        self.page = page.replace(b'<meta name="fbstream-glb" content="">',
                                 b'<meta name="fbstream-glb" content="%s">' % (html.escape(glb).encode(),))

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"public, max-age=60")
        return self.page


class StaticPlayers(Resource):
    """``/static/<name>`` for the player files only: no directory is served."""

    def __init__(self, node_modules: str) -> None:
        super().__init__()
        self.node_modules = node_modules

    def getChild(self, path: bytes, request: Request) -> Resource:
        parts = PLAYER_FILES.get(path)
        if parts is not None:
            full = os.path.join(self.node_modules, *parts)
            if os.path.exists(full):
                f = File(full, defaultType="application/javascript")
                return f
            return _Missing(full)
        return _Missing(None)


class _Missing(Resource):
    isLeaf = True

    def __init__(self, path: str | None) -> None:
        super().__init__()
        self.path = path

    def render_GET(self, request: Request) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if self.path is None:
            return b"no such file\n"
        return ("%s is missing: run 'npm install --prefix web' (see README.rst)\n" % (self.path,)).encode()


class PingResource(Resource):
    """
    ``/ping``: nothing, at once, to any origin: what a page times to measure
    its round trip to this PoP for the global load balancer.
    """

    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setResponseCode(204)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"access-control-allow-origin", b"*")
        request.setHeader(b"timing-allow-origin", b"*")
        return b""


def install(root: Resource, node_modules: str, glb: str = "") -> None:
    root.putChild(b"", PageResource(glb))
    root.putChild(b"static", StaticPlayers(node_modules))
    root.putChild(b"ping", PingResource())
