"""
The caching tiers of the origin and PoP roles, built from configuration:

- origin: one cache in front of the encoders' HTTP (``origin.upstreams``);
- pop: a proxy layer on the viewers' listener with a small cache of its own,
  sharding URLs by consistent hashing over the cache layer's hosts
  (``pop.cache_hosts``), and this PoP's own cache layer (``pop.cache_listen``)
  in front of the origin (``pop.origins``).
"""

from __future__ import annotations

import re
from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

from fbstream import config as _config
from fbstream.cache.engine import CacheSettings, CachingResource
from fbstream.cache.upstream import Upstreams
from fbstream.config import RoleConfig
from fbstream.live.clock import TimeResource
from fbstream.metrics import metrics_resource
from fbstream.reactors import IReactorClients, IReactorServers


class _ClosePool(Service):
    def __init__(self, upstreams: Upstreams) -> None:
        self.upstreams = upstreams

    def stopService(self) -> Any:
        super().stopService()
        return self.upstreams.close()


def cache_settings(config: RoleConfig, max_bytes_key: str = "cache.max_bytes") -> CacheSettings:
    return _config.settings(CacheSettings, config, "cache", max_bytes=config[max_bytes_key])


def caching_tier(
    parent: MultiService, tier: str, hosts: list[str], settings: CacheSettings, reactor: IReactorClients
) -> CachingResource:
    upstreams = Upstreams(reactor, hosts, tier=tier)
    _ClosePool(upstreams).setServiceParent(parent)
    return CachingResource(tier, upstreams.get, reactor, settings)


class OwnerUpstreams:
    """
    The origin's way to the encoder of each stream: the owner the registry
    names (looked up at most once a second per stream), else the last owner's
    address in the stream's state (a replay), else the configured upstreams.
    """

    log = Logger()
    STREAM = re.compile(rb"^/live/([A-Za-z0-9_.-]{1,128})/")

    def __init__(self, parent: MultiService, reactor: IReactorClients, registry: Any, fallback: Upstreams) -> None:
        self.parent = parent
        self.reactor = reactor
        self.registry = registry
        self.fallback = fallback
        self._known: dict[str, tuple[str | None, float]] = {}
        self._hosts: dict[str, Upstreams] = {}

    def get(self, path: bytes) -> Deferred[Any]:
        match = self.STREAM.match(path)
        if match is None:
            return self.fallback.get(path)
        d = self._owner(match.group(1).decode())
        return d.addCallback(lambda endpoint: self._upstreams(endpoint).get(path))

    def post(self, path: bytes, body: bytes) -> Deferred[Any]:
        """POST to the stream's owner (a viewer's comment or reaction, for its encoder)."""
        match = self.STREAM.match(path)
        if match is None:
            return self.fallback.post(path, body)
        d = self._owner(match.group(1).decode())
        return d.addCallback(lambda endpoint: self._upstreams(endpoint).post(path, body))

    def _upstreams(self, endpoint: str | None) -> Upstreams:
        if endpoint is None:
            return self.fallback
        hosts = self._hosts.get(endpoint)
        if hosts is None:
            hosts = self._hosts[endpoint] = Upstreams(self.reactor, [endpoint], tier="origin")
            _ClosePool(hosts).setServiceParent(self.parent)
        return hosts

    @inlineCallbacks
    def _owner(self, stream: str) -> Any:
        now = self.reactor.seconds()
        known = self._known.get(stream)
        if known is not None and known[1] > now:
            return known[0]
        endpoint = None
        try:
            owner = yield self.registry.owner(stream)
            if owner is not None:
                endpoint = owner.http
            else:
                state = yield self.registry.read_state(stream)
                endpoint = state.http if state is not None else None
        except Exception as e:
            self.log.warn("registry lookup of {stream} failed: {e}", stream=stream, e=e)
        if len(self._known) > 10000:
            self._known.clear()
        self._known[stream] = (endpoint, now + 1.0)
        return endpoint


def build_origin(parent: MultiService, config: RoleConfig, reactor: IReactorClients, root: Resource,
                 registry: Any = None) -> CachingResource:
    """The origin's cache on ``root``; viewers' comments and reactions pass through it to their encoder."""
    from fbstream.live.posts import PostsFirst, UpstreamPosts

    upstreams = Upstreams(reactor, config["origin.upstreams"], tier="origin")
    _ClosePool(upstreams).setServiceParent(parent)
    fetch: Any = upstreams
    if registry is not None:
        fetch = OwnerUpstreams(parent, reactor, registry, upstreams)
    cache = CachingResource("origin", fetch.get, reactor, cache_settings(config))
    root.putChild(b"live", PostsFirst(cache, UpstreamPosts(fetch.post)))
    root.putChild(b"time", TimeResource(reactor))
    return cache


def build_proxy_layer(parent: MultiService, config: RoleConfig, reactor: IReactorClients,
                      root: Resource) -> CachingResource:
    """The PoP's proxy layer on ``root`` (a viewers' site: this process's, or a worker's), and the page."""
    proxy = caching_tier(
        parent, "pop-proxy", config["pop.cache_hosts"], cache_settings(config, "pop.proxy_max_bytes"), reactor
    )
    root.putChild(b"live", proxy)
    root.putChild(b"time", TimeResource(reactor))
    from fbstream import player

    glb = config["glb.player_url"] or config["glb.url"]
    player.install(root, config["pop.player_dir"], "" if glb == "off" else glb.rstrip("/"))
    return proxy


def viewer_posts(parent: MultiService, config: RoleConfig, reactor: IReactorClients, root: Resource,
                 proxy: CachingResource) -> None:
    """
    The viewers' comments and reactions on ``root`` (a viewers' site),
    limited per viewer there and passed on to the origins (``pop.origins``),
    with this process's count of each stream's viewers (``proxy``'s).
    """
    import os
    import socket

    from twisted.application.internet import TimerService

    from fbstream.live.posts import Audience, PostsFirst, ViewerPosts

    if not config["pop.origins"]:
        return  # no data center to pass them to
    upstreams = Upstreams(reactor, config["pop.origins"], tier="pop-posts")
    _ClosePool(upstreams).setServiceParent(parent)
    api = root.children.get(b"api") or Resource()
    posts = ViewerPosts(reactor, upstreams.post)
    root.putChild(b"api", PostsFirst(api, posts))
    audience = Audience(reactor, posts.batches, "%s:%d" % (socket.gethostname()[:40], os.getpid()))
    proxy.viewing = audience.saw
    counting = TimerService(1.0, audience.report)
    counting.clock = reactor
    counting.setServiceParent(parent)


def build_pop(
    parent: MultiService, config: RoleConfig, reactor: IReactorServers, root: Resource
) -> dict[str, CachingResource]:
    """The proxy layer on ``root`` (the viewers' site); returns both layers' caches."""

    layers: dict[str, CachingResource] = {"pop-proxy": build_proxy_layer(parent, config, reactor, root)}
    if config["pop.cache_listen"]:
        cache = caching_tier(parent, "pop-cache", config["pop.origins"], cache_settings(config), reactor)
        cache.manifests_uncached = True
        cache_root = Resource()
        cache_root.putChild(b"live", cache)
        cache_root.putChild(b"time", TimeResource(reactor))
        cache_root.putChild(b"metrics", metrics_resource())
        for description in config["pop.cache_listen"]:
            strports.service(description, Site(cache_root), reactor=reactor).setServiceParent(parent)
        layers["pop-cache"] = cache
    return layers
