"""
The composition root: one builder per role, chosen from :data:`BUILDERS`,
each making its role's objects in the order they depend on one another and
handing each what it needs when it is made. What the roles of one process
share (the embedded registry, an ephemeral token key, the live API the demo
uses) is a :class:`Process`, not a dict.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, cast

import attrs
from twisted.application import strports
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import Site

from fbstream.config import ConfigError, RoleConfig, loopback_only, named_urls, read_secret, worker_count
from fbstream.diskio import ThreadPoolService
from fbstream.limits import ConnectionLimits
from fbstream.live.api import APISettings, LiveVideosResource, load_api_key
from fbstream.live.hub import StreamHub
from fbstream.live.ingest import OWNED_ELSEWHERE, HubIngest, IIngest
from fbstream.live.login import SessionResource, Sessions
from fbstream.live.record import FLVRecorderFactory
from fbstream.live.rtmp import RTMPServerFactory
from fbstream.live.tokens import KeyConfigError, KeyRing
from fbstream.media import IConsumerFactory
from fbstream.reactors import IReactorRoles
from fbstream.registry.base import IRegistry
from fbstream.relay.pull import Puller
from fbstream.relay.relay import RelayIngest, Route
from fbstream.roles.services import (
    BoundedRequest,
    ForwardedRequest,
    LoginLink,
    RoleService,
    Stop,
    access_log_line,
    http_root,
    pop_play_route,
    pop_route,
    ring_play_route,
    ring_route,
    rtmp_settings,
)


@attrs.frozen
class LiveAPI:
    """The live API a PoP serves: what the demo needs to go live through it."""

    keys: KeyRing
    registry: IRegistry
    settings: APISettings


@attrs.define
class Process:
    """
    What the roles of one process share. ``all_in_one`` is the ``all`` role:
    its roles make up for secrets that are not configured (a generated API key,
    an ephemeral token key) because they share them with one another.
    """

    reactor: IReactorRoles
    all_in_one: bool = False
    #: The live API, once a PoP serves one.
    api: LiveAPI | None = None
    _registry: IRegistry | None = None
    _token_keys: KeyRing | None = None
    _api_key: str | None = None

    def embedded_registry(self, lease_seconds: float) -> IRegistry:
        """The in-memory registry, one per process."""
        if self._registry is None:
            from fbstream.registry.memory import MemoryRegistry

            self._registry = MemoryRegistry(self.reactor, lease_seconds)
        return self._registry

    def token_keys(self, config: RoleConfig, required: bool = False) -> KeyRing | None:
        """
        The stream token keys (None if tokens are not required). With none
        configured, the ``all`` role makes an ephemeral key that its own API
        and encoder share; any other role refuses to start.
        """
        if not config["tokens.required"] and not required:
            return None
        try:
            keys = KeyRing.load(config["tokens.keys_file"])
        except KeyConfigError as e:
            raise ConfigError(str(e)) from None
        if keys is not None:
            return keys
        if not self.all_in_one:
            raise ConfigError(
                "%s: tokens.required is true but there are no token keys: set "
                "$FBSTREAM_TOKEN_KEYS or tokens.keys_file (or tokens.required=false)" % (config.role,))
        if self._token_keys is None:
            self._token_keys = KeyRing.generate()
        return self._token_keys

    def api_key(self, config: RoleConfig) -> str | None:
        """The live API's key (the ``all`` role makes one if none is configured)."""
        try:
            key = load_api_key(config["api.key_file"])
        except OSError as e:
            raise ConfigError("cannot read api.key_file: %s" % (e.strerror,)) from None
        if key is None and self.all_in_one:
            if self._api_key is None:
                self._api_key = os.urandom(16).hex()
            key = self._api_key
        return key


def check_secrets(configs: dict[str, RoleConfig]) -> None:
    """Fail at startup, as a usage error, on missing or malformed secrets and routes."""
    process = Process(reactor=cast(IReactorRoles, None), all_in_one=len(configs) > 1)
    for config in configs.values():
        if config.role == "dc-proxy":
            ring_route(config["relay.encoders"], config["relay.virtual_nodes"])
        elif config.role == "pop":
            pop_route(config["relay.dc_proxies"])
            if worker_count(config["pop.workers"]) > 1:
                from fbstream.roles.workers import tcp_listen

                for description in config["http.listen"]:
                    tcp_listen(description)
        if config.role == "encoder":
            process.token_keys(config)
            from fbstream.encoder.service import steering

            steering(config)
        elif config.role == "pop" and process.api_key(config) is not None:
            process.token_keys(config, required=True)
        if config.role == "loadgen":
            loadgen_secret(config)
        if config.role == "glb":
            glb_parts(config)
        if "push.secret_file" in config.values:
            from fbstream.push.service import check_push

            check_push(config)


def registry_for(config: RoleConfig, process: Process, service: RoleService) -> IRegistry:
    """The registry of ``registry.backend``; the embedded one is shared by the roles of one process."""
    backend = config["registry.backend"]
    if backend == "etcd":
        from fbstream.registry.etcd import EtcdRegistry

        # treq names what it needs (TCP, time, a name resolver) in a private
        # interface; a real reactor provides it.
        registry = EtcdRegistry(cast(Any, process.reactor), config["registry.etcd"], config["registry.prefix"],
                                config["registry.lease_seconds"])
        Stop(registry.close).setServiceParent(service)
        return registry
    if backend != "embedded":
        raise ConfigError("registry.backend must be embedded or etcd, not %r" % (backend,))
    return process.embedded_registry(config["registry.lease_seconds"])


def hub_for(config: RoleConfig, consumers: list[IConsumerFactory] | None = None) -> StreamHub:
    return StreamHub(config.role, consumers or (), max_gop_bytes=config["rtmp.gop_cache_bytes"],
                     video_codecs=config["rtmp.video_codecs"], audio_codecs=config["rtmp.audio_codecs"])


def recorders(service: RoleService, config: RoleConfig, process: Process) -> list[IConsumerFactory]:
    """An FLV recording of every publish taken here, if ``record.dir`` is set."""
    if not config["record.dir"]:
        return []
    disk = ThreadPoolService("fbstream-%s-disk" % (config.role,), 1, 2, process.reactor)
    disk.setServiceParent(service)
    return [FLVRecorderFactory(config["record.dir"], disk.pool, process.reactor, config.role,
                               config["record.max_backlog"])]


def relay_ingest(config: RoleConfig, process: Process, route: Route,
                 retry_codes: frozenset[str] = frozenset()) -> RelayIngest:
    """Publishes relayed to the next hop towards the stream's encoder."""
    return RelayIngest(process.reactor, route, config["rtmp.app"], config.role, config["relay.connect_timeout"],
                       config["relay.publish_timeout"], retry_codes=retry_codes)


def puller(config: RoleConfig, process: Process, hub: StreamHub, route: Callable[[str], list[str]]) -> Puller:
    """RTMP players here: each stream pulled once from the next hop towards its encoder."""
    return Puller(process.reactor, hub, route, config["rtmp.app"], config.role,
                  config["relay.connect_timeout"], config["relay.connect_timeout"] * 2, config["relay.pull_linger"])


def listen_rtmp(service: RoleService, config: RoleConfig, process: Process, hub: StreamHub, ingest: IIngest | None,
                players: Puller | None = None) -> None:
    factory = RTMPServerFactory(hub, process.reactor, rtmp_settings(config), ingest, config.role, players)
    for description in config["rtmp.listen"]:
        strports.service(description, factory, reactor=process.reactor).setServiceParent(service)


def bounded_site(config: RoleConfig, reactor: Any, root: Resource, name: str,
                 playback: Any = None) -> ConnectionLimits:
    """
    ``root``'s site, bounded in connections and request heads, with the
    access log; with ``playback`` (the PoP's proxy layer, a viewers' site),
    its ``GET /live/...`` in a lane of their own (:mod:`fbstream.cache.fastlane`).
    """
    access_log = config["http.access_log"]
    site = Site(root, logPath=access_log if access_log not in ("", "off") else None, logFormatter=access_log_line)
    site.requestFactory = BoundedRequest
    if access_log == "off":
        site.log = lambda request: None  # type: ignore[method-assign]
    served: Any = site
    if playback is not None:
        from fbstream.cache.fastlane import ViewerSite

        served = ViewerSite(site, playback, reactor)
    limited = ConnectionLimits(served, reactor, name, config["http.max_connections"],
                               config["http.max_connections_per_address"], config["http.head_timeout"])
    limited.site = site
    cast(Any, site).limits = limited  # its connections, by client address (the PoP's load reports)
    return limited


def listen_http(service: RoleService, config: RoleConfig, process: Process, root: Resource,
                playback: Any = None) -> Site:
    """The role's site on ``http.listen``; strports fails startup on a port in use."""
    limited = bounded_site(config, process.reactor, root, "%s-http" % (config.role,), playback)
    for description in config["http.listen"]:
        strports.service(description, limited, reactor=process.reactor).setServiceParent(service)
    return cast(Site, limited.site)


def listen_http_workers(service: RoleService, config: RoleConfig, process: Process, root: Resource,
                        count: int) -> Site:
    """
    ``http.listen`` served by ``count`` worker processes (``pop.workers``);
    what they forward (the live API, ``/metrics``) is served here, on a
    loopback port of its own.
    """
    from fbstream.roles.workers import WorkerPool

    limited = bounded_site(config, process.reactor, root, "%s-forwarded" % (config.role,))
    limited.site.requestFactory = ForwardedRequest  # each request's client: the viewer its worker names
    forwarded = process.reactor.listenTCP(0, cast(Any, limited), interface="127.0.0.1")
    Stop(forwarded.stopListening).setServiceParent(service)
    service.workers = WorkerPool(process.reactor, config, count, config["http.listen"],
                                 cast(Any, forwarded.getHost()).port)
    service.workers.setServiceParent(service)
    return cast(Site, limited.site)


def live_api(service: RoleService, config: RoleConfig, process: Process, root: Resource,
             registry: IRegistry) -> None:
    """``/api/v1``: live videos and browser sessions, if the PoP has an API key."""
    api_key = process.api_key(config)
    if api_key is None:
        return
    keys = process.token_keys(config, required=True)
    assert keys is not None
    settings = APISettings(api_key, config["api.datacenter"], config["api.token_ttl_hours"] * 3600,
                           config["api.rtmp_url"].rstrip("/"), config["api.rtmps_url"].rstrip("/"),
                           config["api.playback_url"].rstrip("/"))
    sessions = Sessions(api_key, process.reactor)
    v1 = Resource()
    pops_for = None
    if config["glb.url"]:
        # Viewers are given the PoP the balancer's map names for them.
        from fbstream.glb.maps import MapAsker

        asker = MapAsker(process.reactor, config["glb.url"], glb_secret(config))
        Stop(asker.close).setServiceParent(service)
        pops_for = asker.pops_for
    v1.putChild(b"live_videos", LiveVideosResource(registry, keys, settings, process.reactor, sessions, pops_for))
    v1.putChild(b"session", SessionResource(sessions))
    api = Resource()
    api.putChild(b"v1", v1)
    root.putChild(b"api", api)
    process.api = LiveAPI(keys, registry, settings)
    if process.all_in_one:
        LoginLink(sessions, settings.playback_url).setServiceParent(service)


def build_pop(config: RoleConfig, process: Process) -> RoleService:
    """Viewers' caches and page, the live API, and publishers and players relayed to the data center."""
    from fbstream.cache.service import build_pop as pop_caches

    service = RoleService(config.role)
    root = http_root()
    registry = registry_for(config, process, service)
    live_api(service, config, process, root, registry)
    if "rtmp.listen" in config.values:
        if config["relay.dc_proxies"]:
            hub = hub_for(config)
            ingest = relay_ingest(config, process, pop_route(config["relay.dc_proxies"]))
            players = puller(config, process, hub, pop_play_route(config["relay.dc_proxies"]))
            listen_rtmp(service, config, process, hub, ingest, players)
        else:  # no data center: publishers play back from here
            hub = hub_for(config, recorders(service, config, process))
            listen_rtmp(service, config, process, hub, None)
        service.hub = hub
    service.caches = pop_caches(service, config, process.reactor, root)
    if config["push.origins"] and "pop-cache" in service.caches:
        subscribe_pushes(service, config, process, service.caches["pop-cache"])
    workers = worker_count(config["pop.workers"])
    if workers > 1:
        service.site = listen_http_workers(service, config, process, root, workers)
    else:
        from fbstream.cache.service import viewer_posts

        viewer_posts(service, config, process.reactor, root, service.caches["pop-proxy"])
        service.site = listen_http(service, config, process, root, service.caches["pop-proxy"])
        if config["glb.url"]:
            limits = cast(Any, service.site).limits
            load_reporter(config, process.reactor, 0, limits, service.caches["pop-proxy"]).setServiceParent(service)
    return service


def subscribe_pushes(service: RoleService, config: RoleConfig, process: Process, cache: Any) -> None:
    """
    The PoP's cache layer subscribes to the streams its viewers ask for, each
    at one origin (the same for every cache host: a ring of ``push.origins``).
    """
    from fbstream.cache.push import CachePushSink
    from fbstream.cache.ring import HashRing
    from fbstream.push.service import push_clients

    origins = config["push.origins"]
    clients = push_clients(service, config, process.reactor, cache.tier, origins, CachePushSink(cache))
    ring = HashRing(clients, origins)

    def asked(stream: str) -> None:
        next(ring.walk(stream.encode())).want(stream)

    def pushing(stream: str) -> bool:
        return next(ring.walk(stream.encode())).pushing(stream)

    cache.asked, cache.pushing, cache.push_wait = asked, pushing, config["push.wait"]


def build_dc_proxy(config: RoleConfig, process: Process) -> RoleService:
    """Publishers relayed to their encoder on the hash ring, and players pulled from it."""
    service = RoleService(config.role)
    if "rtmp.listen" in config.values:
        encoders, vnodes = config["relay.encoders"], config["relay.virtual_nodes"]
        hub = hub_for(config)
        ingest = relay_ingest(config, process, ring_route(encoders, vnodes), frozenset([OWNED_ELSEWHERE]))
        listen_rtmp(service, config, process, hub, ingest, puller(config, process, hub, ring_play_route(encoders, vnodes)))
        service.hub = hub
    service.site = listen_http(service, config, process, http_root())
    return service


def build_encoder(config: RoleConfig, process: Process) -> RoleService:
    """Each published stream transcoded, packaged and served, its ownership held in the registry."""
    from fbstream.encoder.ownership import Broadcasts
    from fbstream.encoder.service import build_encoder as encoder_parts

    service = RoleService(config.role)
    root = http_root()
    registry = registry_for(config, process, service)
    consumers = recorders(service, config, process)

    def broadcasts(idle: Callable[[str], Deferred[None]]) -> Broadcasts:
        return Broadcasts(registry, process.reactor, process.token_keys(config), config["encoder.name"],
                          config["encoder.advertise_http"], config["ingest.grace_seconds"],
                          config["ingest.takeover_silence"], config["ingest.claim_wait"], idle=idle)

    push = None
    if config["push.listen"]:
        from fbstream.push.service import listen_push, push_hub

        push = push_hub(config, process.reactor, "encoder")
        listen_push(service, config, process.reactor, push)
    encoder = encoder_parts(service, config, process.reactor, root, broadcasts, push=push)
    assert encoder.broadcasts is not None
    Stop(encoder.broadcasts.stop).setServiceParent(service)
    hub = hub_for(config, consumers + [encoder])
    if "rtmp.listen" in config.values:
        listen_rtmp(service, config, process, hub, HubIngest(hub, encoder.broadcasts))
    service.hub, service.encoder, service.broadcasts = hub, encoder, encoder.broadcasts
    service.site = listen_http(service, config, process, root)
    return service


def build_origin(config: RoleConfig, process: Process) -> RoleService:
    """The data center's cache in front of the encoders, asking each stream's owner."""
    from fbstream.cache.service import build_origin as origin_cache

    service = RoleService(config.role)
    root = http_root()
    registry = registry_for(config, process, service)
    cache = origin_cache(service, config, process.reactor, root, registry)
    service.caches = {"origin": cache}
    if config["push.listen"]:
        # Pushed to by the encoders for the streams the PoPs subscribe to,
        # and pushing on to the PoPs what comes.
        from fbstream.cache.push import CachePushSink, RelaySource
        from fbstream.push.service import listen_push, push_clients, push_hub

        hub = push_hub(config, process.reactor, "origin")
        sink = CachePushSink(cache, relay=hub)
        clients = push_clients(service, config, process.reactor, "origin", config["push.upstreams"], sink)
        hub.source = RelaySource(sink, clients)
        cache.pushing = lambda stream: any(client.pushing(stream) for client in clients)
        cache.push_wait = config["push.wait"]
        listen_push(service, config, process.reactor, hub)
    service.site = listen_http(service, config, process, root)
    return service


def build_loadgen(config: RoleConfig, process: Process) -> RoleService:
    """A load-generating agent: simulated viewers, run by ``fbstream-load`` over ``/v1/run``."""
    import socket

    from fbstream.load.agent import AgentResource

    service = RoleService(config.role)
    root = http_root()
    agent = AgentResource(process.reactor, config["loadgen.name"] or socket.gethostname(), loadgen_secret(config),
                          config["loadgen.max_viewers"])
    root.putChild(b"v1", agent)
    service.site = listen_http(service, config, process, root)
    return service


def loadgen_secret(config: RoleConfig) -> bytes | None:
    """The agent's secret; an agent reachable from other hosts must have one."""
    return listener_secret(config, "loadgen.secret_file", "FBSTREAM_LOAD_SECRET", "the agent")


def listener_secret(config: RoleConfig, key: str, variable: str, who: str) -> bytes | None:
    """
    The bearer secret of a role's control API (``key``, else ``$variable``):
    one whose ``http.listen`` reaches past loopback must have one.
    """
    secret = read_secret(config, key, variable, "%s's secret" % (who,))
    for description in config["http.listen"]:
        if secret is None and not loopback_only(description):
            raise ConfigError("http.listen %s is reachable from other hosts: give %s a secret "
                              "(%s or $%s)" % (description, who, key, variable))
    return secret


def glb_parts(config: RoleConfig) -> tuple[dict[str, str], Any, bytes | None]:
    """The balancer's PoPs (name to URL), its seed map and its secret, checked."""
    import tomllib

    from fbstream.glb.balance import SeedMap

    pops = named_urls("glb.pops", config["glb.pops"])
    if not pops:
        raise ConfigError("glb.pops: name at least one PoP")
    seed = SeedMap()
    if config["glb.seed_file"]:
        try:
            with open(config["glb.seed_file"], "rb") as f:
                seed = SeedMap.parse(tomllib.load(f))
        except OSError as e:
            raise ConfigError("cannot read glb.seed_file: %s" % (e.strerror,)) from None
        except (tomllib.TOMLDecodeError, ValueError, TypeError, AttributeError) as e:
            raise ConfigError("glb.seed_file: %s" % (e,)) from None
    from fbstream.glb.predict import PREDICTORS

    if config["glb.predictor"] not in PREDICTORS:
        raise ConfigError("glb.predictor must be one of %s" % (", ".join(PREDICTORS),))
    if not 0 < config["glb.headroom"] <= 1 or config["glb.interval"] <= 0:
        raise ConfigError("glb.headroom must be in (0, 1] and glb.interval above 0")
    return pops, seed, listener_secret(config, "glb.secret_file", "FBSTREAM_GLB_SECRET", "the balancer")


def build_glb(config: RoleConfig, process: Process) -> RoleService:
    """The global load balancer: PoPs' load in, plans made each second, maps and steering out."""
    from fbstream.glb.balance import Balancer
    from fbstream.glb.service import GLB, V1Resource

    pops, seed, secret = glb_parts(config)
    service = RoleService(config.role)
    balancer = Balancer(predictor=config["glb.predictor"], lead=config["glb.lead"], interval=config["glb.interval"],
                        window=config["glb.window"], headroom=config["glb.headroom"],
                        down_after=config["glb.down_after"], hysteresis_ms=config["glb.hysteresis_ms"],
                        max_networks=config["glb.max_networks"], seed=seed)
    # One thread: a plan is solved at a time.
    solver = ThreadPoolService("fbstream-glb-solve", 1, 1, process.reactor)
    solver.setServiceParent(service)
    glb = GLB(process.reactor, balancer, pops, solver.pool)
    glb.setServiceParent(service)
    root = http_root()
    root.putChild(b"v1", V1Resource(glb, secret, config["glb.steering_ttl"]))
    service.glb = glb
    service.site = listen_http(service, config, process, root)
    return service


def glb_secret(config: RoleConfig) -> bytes | None:
    """The secret a PoP presents to its balancer (``glb.secret_file`` or ``$FBSTREAM_GLB_SECRET``), if any."""
    return read_secret(config, "glb.secret_file", "FBSTREAM_GLB_SECRET", "the balancer's secret")


def load_reporter(config: RoleConfig, reactor: Any, part: int, limits: ConnectionLimits, proxy: Any) -> Any:
    """
    This PoP process's reports to the balancer at ``glb.url``: its viewer
    connections (``limits``) and its proxy layer's requests and bytes; with
    ``glb.redirect``, the answers arm ``limits``' safety valve.
    """
    from fbstream.glb.report import Counts, LoadReporter

    secret = glb_secret(config)

    def counts() -> Counts:
        return Counts(proxy.m_requests._value.get(), proxy.m_bytes_served._value.get())

    heard = None
    if config["glb.redirect"]:
        from fbstream.glb.valve import Valve

        limits.valve = Valve(config["glb.capacity"], lambda: limits.open)
        heard = limits.valve.heard
    return LoadReporter(reactor, config["glb.url"], config["glb.name"], part, config["glb.capacity"], secret,
                        lambda: limits.by_address, counts, heard=heard)


#: The builder of each role.
BUILDERS: dict[str, Callable[[RoleConfig, Process], RoleService]] = {
    "pop": build_pop,
    "dc-proxy": build_dc_proxy,
    "encoder": build_encoder,
    "origin": build_origin,
    "loadgen": build_loadgen,
    "glb": build_glb,
}


def build_role(config: RoleConfig, process: Process | IReactorRoles) -> RoleService:
    """The service of one role; ``process`` is what it shares with the other roles (or a reactor, alone)."""
    if not isinstance(process, Process):
        process = Process(reactor=process)
    return BUILDERS[config.role](config, process)
