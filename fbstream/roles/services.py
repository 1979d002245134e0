"""
Building blocks every role is made of: listeners from endpoint strings, the
HTTP site with ``/metrics``, and the RTMP listener with its stream hub.
"""

from __future__ import annotations

import io
import os
import re
from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService, Service
from twisted.web.http import combinedLogFormatter
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from fbstream import config as _config
from fbstream.cache.ring import HashRing
from fbstream.config import ConfigError, RoleConfig
from fbstream.diskio import ThreadPoolService
from fbstream.limits import ConnectionLimits
from fbstream.live.api import APISettings, LiveVideosResource, load_api_key
from fbstream.live.hub import StreamHub
from fbstream.live.ingest import OWNED_ELSEWHERE, HubIngest, PublishRefused
from fbstream.live.login import SessionResource, Sessions
from fbstream.live.record import FLVRecorderFactory
from fbstream.live.rtmp import RTMPServerFactory, RTMPServerSettings
from fbstream.live.tokens import KeyConfigError, KeyRing, peek_datacenter, token_from_query
from fbstream.media import IConsumerFactory
from fbstream.metrics import ROLE_UP, metrics_resource
from fbstream.relay.pull import Puller
from fbstream.relay.relay import RelayIngest


def http_root() -> Resource:
    root = Resource()
    root.putChild(b"metrics", metrics_resource())
    return root


def rtmp_settings(config: RoleConfig) -> RTMPServerSettings:
    return _config.settings(RTMPServerSettings, config, "rtmp")


#: Query parameters that carry a secret (a stream token, a one-time login).
_SECRET_PARAMETER = re.compile(r"\b((?:token|login)=)[^&\s\"]*")


def access_log_line(timestamp: str, request: Any) -> str:
    """The combined log format, with the secrets in URLs and referrers left out."""
    return _SECRET_PARAMETER.sub(r"\1-", combinedLogFormatter(timestamp, request))


class BoundedRequest(Request):
    """
    A request whose body may be at most ``max_body`` bytes, kept in memory:
    one that says it is longer is answered 413 before a byte of it is read,
    and a chunked one is cut off there. (twisted.web spools any body over
    100 KB to a temporary file, before authentication or routing.) None of
    our URLs takes more than a few KB.
    """

    max_body = 64 * 1024
    _refused = False
    _body_seen = 0
    content: Any

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()
        if length is not None and length > self.max_body:
            self._refuse()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._body_seen += len(data)
        if self._body_seen > self.max_body:
            self._refuse()
            return
        self.content.write(data)

    def _refuse(self) -> None:
        self._refused = True
        self.content = io.BytesIO()
        transport: Any = self.channel.transport
        requests = getattr(self.channel, "requests", [])
        if requests and requests[0] is self:  # nothing before it still being answered
            message = b"request bodies are limited to %d bytes\n" % (self.max_body,)
            transport.write(b"HTTP/1.1 413 Content Too Large\r\ncontent-type: text/plain\r\n"
                            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(message), message))
            transport.loseConnection()
        else:
            transport.abortConnection()


class RoleService(MultiService):
    """One role: its listeners and helpers, with ``hub`` and ``site`` for tests."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role
        self.setName(role)
        self.hub: StreamHub | None = None
        self.site: Site | None = None
        self.encoder: Any = None
        self.broadcasts: Any = None
        self.caches: dict[str, Any] = {}

    def startService(self) -> None:
        ROLE_UP.labels(role=self.role).set(1)
        super().startService()

    def stopService(self) -> Any:
        ROLE_UP.labels(role=self.role).set(0)
        return super().stopService()


class _Stop(Service):
    """Runs ``stop`` when the role stops."""

    def __init__(self, stop: Any) -> None:
        self.stop = stop

    def stopService(self) -> Any:
        super().stopService()
        return self.stop()


class _LoginLink(Service):
    """
    Shows, once the role is up, the link that signs a browser in to the live
    API: on the process's standard error, the terminal of ``twistd -n``, and
    never in the log, which outlives the link's use.
    """

    def __init__(self, sessions: Sessions, base_url: str) -> None:
        self.sessions = sessions
        self.base_url = base_url

    def startService(self) -> None:
        super().startService()
        link = "%s/?login=%s" % (self.base_url, self.sessions.new_code())
        text = ("\nfbstream is running. To go live, open this link (it works once; it signs\n"
                "your browser in to the live API) and press Go live:\n\n    %s\n\n" % (link,))
        try:
            os.write(2, text.encode())
        except OSError:
            pass  # no standard error (daemonized): the API key is the way in


def make_registry(config: RoleConfig, reactor: Any, parent: MultiService, shared: dict[str, Any]) -> Any:
    """The registry of ``registry.backend``; the embedded one is shared by the roles of one process."""
    backend = config["registry.backend"]
    if backend == "etcd":
        from fbstream.registry.etcd import EtcdRegistry

        registry = EtcdRegistry(reactor, config["registry.etcd"], config["registry.prefix"],
                                config["registry.lease_seconds"])
        _Stop(registry.close).setServiceParent(parent)
        return registry
    if backend != "embedded":
        raise ConfigError("registry.backend must be embedded or etcd, not %r" % (backend,))
    from fbstream.registry.memory import MemoryRegistry

    if "registry" not in shared:
        shared["registry"] = MemoryRegistry(reactor, config["registry.lease_seconds"])
    return shared["registry"]


def pop_api_key(config: RoleConfig, shared: dict[str, Any]) -> str | None:
    """The live API's key (the ``all`` role makes one if none is configured)."""
    try:
        api_key = load_api_key(config["api.key_file"])
    except OSError as e:
        raise ConfigError("cannot read api.key_file: %s" % (e.strerror,)) from None
    if api_key is None and shared.get("all"):
        api_key = shared.setdefault("api_key", os.urandom(16).hex())
    return api_key


def check_secrets(configs: dict[str, RoleConfig]) -> None:
    """Fail at startup, as a usage error, on missing or malformed secrets."""
    shared = {"all": len(configs) > 1}
    for config in configs.values():
        if config.role == "dc-proxy":
            _ring_route(config["relay.encoders"], config["relay.virtual_nodes"])
        elif config.role == "pop":
            _pop_route(config["relay.dc_proxies"])
        if config.role == "encoder":
            token_keys(config, shared)
        elif config.role == "pop" and pop_api_key(config, shared) is not None:
            token_keys(config, shared, required=True)


def token_keys(config: RoleConfig, shared: dict[str, Any], required: bool = False) -> KeyRing | None:
    """
    The stream token keys (None if tokens are not required). With none
    configured, the ``all`` role makes an ephemeral key that its own API and
    encoder share; any other role refuses to start.
    """
    if not config["tokens.required"] and not required:
        return None
    try:
        keys = KeyRing.load(config["tokens.keys_file"])
    except KeyConfigError as e:
        raise ConfigError(str(e)) from None
    if keys is None:
        if not shared.get("all"):
            raise ConfigError(
                "%s: tokens.required is true but there are no token keys: set "
                "$FBSTREAM_TOKEN_KEYS or tokens.keys_file (or tokens.required=false)" % (config.role,))
        keys = shared.setdefault("ephemeral_keys", KeyRing.generate())
    return keys


def _pop_route(dc_proxies: list[str]) -> Any:
    table: dict[str, list[str]] = {}
    for entry in dc_proxies:
        dc, sep, endpoint = entry.partition("=")
        if not sep or not dc or not endpoint:
            raise ConfigError("relay.dc_proxies entry %r is not <datacenter>=<endpoint>" % (entry,))
        table.setdefault(dc, []).append(endpoint)

    def route(name: str, query: str) -> list[str]:
        token = token_from_query(query)
        if not token:
            raise PublishRefused("NetStream.Publish.BadName",
                                 "a stream token is required (publish to <stream id>?token=<token>)", "token")
        dc = peek_datacenter(token)
        if dc is None:
            raise PublishRefused("NetStream.Publish.BadName", "the stream token is malformed", "token")
        if dc not in table:
            raise PublishRefused("NetStream.Publish.BadName",
                                 "the stream token names data center %r, which this PoP does not serve" % (dc,),
                                 "token")
        return table[dc]

    return route


def _pop_play_route(dc_proxies: list[str]) -> Any:
    """A player gives no token: every dc-proxy, in the configured order, is asked for the stream."""
    hops = [entry.partition("=")[2] for entry in dc_proxies]
    return lambda name: list(hops)


def _ring_play_route(encoders: list[str], vnodes: int) -> Any:
    """The encoders in the order a publish of the stream tries them: its owner is the first that has it."""
    route = _ring_route(encoders, vnodes)
    return lambda name: route(name, "")


def _ring_route(encoders: list[str], vnodes: int) -> Any:
    if not encoders:
        raise ConfigError("relay.encoders is empty")
    ring = HashRing(encoders, vnodes=vnodes)

    def route(name: str, query: str) -> list[str]:
        return list(ring.walk(name.encode()))

    return route


def build_role(config: RoleConfig, reactor: Any, shared: dict[str, Any] | None = None) -> RoleService:
    """
    The service of one role from its configuration. ``shared`` carries what
    the roles of one process share (the embedded registry, an ephemeral token
    key for ``all``).
    """
    shared = shared if shared is not None else {}
    role = config.role
    service = RoleService(role)
    root = http_root()
    ingest: Any = None
    registry = None
    if role in ("pop", "encoder", "origin"):
        registry = make_registry(config, reactor, service, shared)
    if role == "dc-proxy":
        ingest = RelayIngest(reactor, _ring_route(config["relay.encoders"], config["relay.virtual_nodes"]),
                             config["rtmp.app"], role, config["relay.connect_timeout"],
                             config["relay.publish_timeout"], retry_codes=frozenset([OWNED_ELSEWHERE]))
    elif role == "pop" and config["relay.dc_proxies"]:
        ingest = RelayIngest(reactor, _pop_route(config["relay.dc_proxies"]), config["rtmp.app"], role,
                             config["relay.connect_timeout"], config["relay.publish_timeout"])
    if role == "pop":
        api_key = pop_api_key(config, shared)
        if api_key is not None:
            keys = token_keys(config, shared, required=True)
            assert keys is not None
            settings = APISettings(api_key, config["api.datacenter"], config["api.token_ttl_hours"] * 3600,
                                   config["api.rtmp_url"].rstrip("/"), config["api.rtmps_url"].rstrip("/"),
                                   config["api.playback_url"].rstrip("/"))
            api = Resource()
            v1 = Resource()
            api.putChild(b"v1", v1)
            sessions = Sessions(api_key, reactor)
            v1.putChild(b"live_videos", LiveVideosResource(registry, keys, settings, reactor, sessions))
            v1.putChild(b"session", SessionResource(sessions))
            root.putChild(b"api", api)
            shared["api"] = (api_key, keys, registry, settings)
            if shared.get("all"):
                _LoginLink(sessions, settings.playback_url).setServiceParent(service)
    puller = None
    if "rtmp.listen" in config.values and ingest is not None:
        # RTMP players here: each stream pulled once from the next hop towards its encoder.
        service.hub = StreamHub(role, max_gop_bytes=config["rtmp.gop_cache_bytes"],
                                video_codecs=config["rtmp.video_codecs"], audio_codecs=config["rtmp.audio_codecs"])
        play_route = (_ring_play_route(config["relay.encoders"], config["relay.virtual_nodes"]) if role == "dc-proxy"
                      else _pop_play_route(config["relay.dc_proxies"]))
        puller = Puller(reactor, service.hub, play_route, config["rtmp.app"], role,
                        config["relay.connect_timeout"], config["relay.connect_timeout"] * 2,
                        config["relay.pull_linger"])
    if "rtmp.listen" in config.values:
        if ingest is None:
            consumers: list[IConsumerFactory] = []
            if config["record.dir"]:
                disk = ThreadPoolService("fbstream-%s-disk" % (role,), 1, 2, reactor)
                disk.setServiceParent(service)
                consumers.append(
                    FLVRecorderFactory(
                        config["record.dir"], disk.pool, reactor, role, config["record.max_backlog"]
                    )
                )
            service.hub = StreamHub(
                role,
                consumers,
                max_gop_bytes=config["rtmp.gop_cache_bytes"],
                video_codecs=config["rtmp.video_codecs"],
                audio_codecs=config["rtmp.audio_codecs"],
            )
        if role == "encoder":
            from fbstream.encoder.ownership import Broadcasts
            from fbstream.encoder.service import build_encoder

            assert service.hub is not None
            service.encoder = build_encoder(service, config, reactor, root)
            service.hub.consumer_factories.append(service.encoder)
            broadcasts = Broadcasts(
                registry, reactor, token_keys(config, shared), config["encoder.name"],
                config["encoder.advertise_http"], config["ingest.grace_seconds"],
                config["ingest.takeover_silence"], config["ingest.claim_wait"])
            broadcasts.idle = service.encoder.idle
            service.encoder.broadcasts = broadcasts
            service.broadcasts = broadcasts
            _Stop(lambda: broadcasts.stop()).setServiceParent(service)
            ingest = HubIngest(service.hub, broadcasts)
        factory = RTMPServerFactory(service.hub, reactor, rtmp_settings(config), ingest, role, puller)
        for description in config["rtmp.listen"]:
            strports.service(description, factory, reactor=reactor).setServiceParent(service)
    if role == "origin":
        from fbstream.cache.service import build_origin

        service.caches = {"origin": build_origin(service, config, reactor, root, registry)}
    elif role == "pop":
        from fbstream.cache.service import build_pop

        service.caches = build_pop(service, config, reactor, root)
    service.site = Site(root, logFormatter=access_log_line)
    service.site.requestFactory = BoundedRequest
    limited = ConnectionLimits(service.site, reactor, "%s-http" % (role,), config["http.max_connections"],
                               config["http.max_connections_per_address"], config["http.head_timeout"])
    # strports' services fail startup loudly on a port in use.
    for description in config["http.listen"]:
        strports.service(description, limited, reactor=reactor).setServiceParent(service)
    return service
