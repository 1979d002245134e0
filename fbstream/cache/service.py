"""
The caching tiers of the origin and PoP roles, built from configuration:

- origin: one cache in front of the encoders' HTTP (``origin.upstreams``);
- pop: a proxy layer on the viewers' listener with a small cache of its own,
  sharding URLs by consistent hashing over the cache layer's hosts
  (``pop.cache_hosts``), and this PoP's own cache layer (``pop.cache_listen``)
  in front of the origin (``pop.origins``).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService, Service
from twisted.web.resource import Resource
from twisted.web.server import Site

from fbstream.cache.engine import CacheSettings, CachingResource
from fbstream.cache.upstream import Upstreams
from fbstream.config import RoleConfig
from fbstream.encoder.web import TimeResource
from fbstream.metrics import metrics_resource


class _ClosePool(Service):
    def __init__(self, upstreams: Upstreams) -> None:
        self.upstreams = upstreams

    def stopService(self) -> Any:
        super().stopService()
        return self.upstreams.close()


def cache_settings(config: RoleConfig, max_bytes_key: str = "cache.max_bytes") -> CacheSettings:
    return CacheSettings(
        max_bytes=config[max_bytes_key],
        lock_timeout=config["cache.lock_timeout"],
        upstream_timeout=config["cache.upstream_timeout"],
        stall_timeout=config["cache.stall_timeout"],
    )


def caching_tier(
    parent: MultiService, tier: str, hosts: list[str], settings: CacheSettings, reactor: Any
) -> CachingResource:
    upstreams = Upstreams(reactor, hosts)
    _ClosePool(upstreams).setServiceParent(parent)
    return CachingResource(tier, upstreams.get, reactor, settings)


def build_origin(parent: MultiService, config: RoleConfig, reactor: Any, root: Resource) -> CachingResource:
    cache = caching_tier(parent, "origin", config["origin.upstreams"], cache_settings(config), reactor)
    root.putChild(b"live", cache)
    root.putChild(b"time", TimeResource(reactor))
    return cache


def build_pop(parent: MultiService, config: RoleConfig, reactor: Any, root: Resource) -> dict[str, CachingResource]:
    """The proxy layer on ``root`` (the viewers' site); returns both layers' caches."""
    from fbstream.roles.services import listen

    layers: dict[str, CachingResource] = {}
    proxy = caching_tier(
        parent, "pop-proxy", config["pop.cache_hosts"], cache_settings(config, "pop.proxy_max_bytes"), reactor
    )
    root.putChild(b"live", proxy)
    root.putChild(b"time", TimeResource(reactor))
    from fbstream import player

    player.install(root, config["pop.player_dir"])
    layers["pop-proxy"] = proxy
    if config["pop.cache_listen"]:
        cache = caching_tier(parent, "pop-cache", config["pop.origins"], cache_settings(config), reactor)
        cache_root = Resource()
        cache_root.putChild(b"live", cache)
        cache_root.putChild(b"time", TimeResource(reactor))
        cache_root.putChild(b"metrics", metrics_resource())
        listen(parent, reactor, config["pop.cache_listen"], Site(cache_root))
        layers["pop-cache"] = cache
    return layers
