"""
Building blocks every role is made of: listeners from endpoint strings, the
HTTP site with ``/metrics``, and the RTMP listener with its stream hub.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IProtocolFactory
from twisted.web.resource import Resource
from twisted.web.server import Site

from fbstream.config import RoleConfig
from fbstream.diskio import ThreadPoolService
from fbstream.live.hub import IConsumerFactory, StreamHub
from fbstream.live.record import FLVRecorderFactory
from fbstream.metrics import ROLE_UP, metrics_resource
from fbstream.rtmp.protocol import RTMPServerFactory, RTMPServerSettings


def listen(parent: MultiService, reactor: Any, descriptions: list[str], factory: IProtocolFactory) -> None:
    """Add one listening service per endpoint string to ``parent``."""
    for description in descriptions:
        service = StreamServerEndpointService(serverFromString(reactor, description), factory)
        service._raiseSynchronously = True  # a port in use fails startup loudly
        service.setServiceParent(parent)


def http_root() -> Resource:
    root = Resource()
    root.putChild(b"metrics", metrics_resource())
    return root


def rtmp_settings(config: RoleConfig) -> RTMPServerSettings:
    return RTMPServerSettings(
        app=config["rtmp.app"],
        handshake_timeout=config["rtmp.handshake_timeout"],
        idle_timeout=config["rtmp.idle_timeout"],
        max_message_size=config["rtmp.max_message_size"],
        max_chunk_streams=config["rtmp.max_chunk_streams"],
        player_queue_bytes=config["rtmp.player_queue_bytes"],
        max_connections=config["rtmp.max_connections"],
    )


class RoleService(MultiService):
    """One role: its listeners and helpers, with ``hub`` and ``site`` for tests."""

    hub: StreamHub | None = None
    site: Site | None = None
    encoder: Any = None
    caches: dict[str, Any] = {}

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role
        self.setName(role)

    def startService(self) -> None:
        ROLE_UP.labels(role=self.role).set(1)
        super().startService()

    def stopService(self) -> Any:
        ROLE_UP.labels(role=self.role).set(0)
        return super().stopService()


def build_role(config: RoleConfig, reactor: Any) -> RoleService:
    """The service of one role from its configuration."""
    role = config.role
    service = RoleService(role)
    if "rtmp.listen" in config.values:
        consumers: list[IConsumerFactory] = []
        if config["record.dir"]:
            disk = ThreadPoolService("fbstream-%s-disk" % (role,), 1, 2)
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
        factory = RTMPServerFactory(service.hub, reactor, rtmp_settings(config))
        listen(service, reactor, config["rtmp.listen"], factory)
    root = http_root()
    if role == "origin":
        from fbstream.cache.service import build_origin

        service.caches = {"origin": build_origin(service, config, reactor, root)}
    elif role == "pop":
        from fbstream.cache.service import build_pop

        service.caches = build_pop(service, config, reactor, root)
    if role == "encoder":
        from fbstream.encoder.service import build_encoder

        assert service.hub is not None
        service.encoder = build_encoder(service, config, reactor, root)
        service.hub.consumer_factories.append(service.encoder)
    service.site = Site(root)
    listen(service, reactor, config["http.listen"], service.site)
    return service
