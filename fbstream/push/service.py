"""
The push channel's ends, made from a role's ``push.*`` settings: a listener
for subscribers (TLS with ALPN ``h2`` when ``push.tls_cert`` is set, and
mutual TLS when ``push.tls_ca`` is too; h2 with prior knowledge on a bare
``tcp:`` endpoint otherwise) and connectors to upstreams, likewise.
"""

from __future__ import annotations

from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService, Service
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString, wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTime
from twisted.internet.protocol import Factory
from twisted.protocols.tls import TLSMemoryBIOFactory

from fbstream.config import ConfigError, RoleConfig, loopback_only, read_secret
from fbstream.push.channel import IPushSink, PushClient, PushHub
from fbstream.push.core import ChannelSettings

ALPN = [b"h2"]


def channel_settings(config: RoleConfig) -> ChannelSettings:
    return ChannelSettings(window=config["push.window"], max_pushes=config["push.max_pushes"],
                           ping_interval=config["push.ping_interval"], ping_timeout=config["push.ping_timeout"])


def load_secret(config: RoleConfig) -> bytes | None:
    """The channel's shared secret: ``push.secret_file``, else ``$FBSTREAM_PUSH_SECRET``, else none."""
    return read_secret(config, "push.secret_file", "FBSTREAM_PUSH_SECRET", "the push channel's secret")


def _read(config: RoleConfig, key: str) -> bytes:
    try:
        with open(config[key], "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError("cannot read %s: %s" % (key, e.strerror)) from None


def _certificate(config: RoleConfig) -> ssl.PrivateCertificate | None:
    if not config["push.tls_cert"]:
        return None
    key = _read(config, "push.tls_key") if config["push.tls_key"] else b""
    try:
        return ssl.PrivateCertificate.loadPEM(_read(config, "push.tls_cert") + b"\n" + key)
    except Exception as e:  # pyOpenSSL's errors name nothing useful
        raise ConfigError("push.tls_cert/push.tls_key: not a PEM certificate and key (%s)" % (e,)) from None


def _authority(config: RoleConfig) -> ssl.Certificate | None:
    if not config["push.tls_ca"]:
        return None
    try:
        return ssl.Certificate.loadPEM(_read(config, "push.tls_ca"))
    except Exception as e:
        raise ConfigError("push.tls_ca: not a PEM certificate (%s)" % (e,)) from None


def check_push(config: RoleConfig) -> None:
    """
    Fail at startup on a push channel that anyone could subscribe to, or
    whose secret would cross the network in the clear; and on unreadable or
    malformed keys and certificates.
    """
    secret = load_secret(config)
    _certificate(config)
    authority = _authority(config)
    for description in config.values.get("push.listen", []):
        if not loopback_only(description) and secret is None and authority is None:
            raise ConfigError("push.listen %s is reachable from other hosts: give the channel a secret "
                              "(push.secret_file or $FBSTREAM_PUSH_SECRET) or client certificates "
                              "(push.tls_cert, push.tls_key, push.tls_ca)" % (description,))
    upstreams = config.values.get("push.upstreams", []) + config.values.get("push.origins", [])
    for description in upstreams:
        if secret is not None and authority is None and not loopback_only(description):
            raise ConfigError("the push channel's secret would cross the network in the clear to %s: "
                              "set push.tls_ca (TLS with ALPN h2)" % (description,))


def listen_push(parent: MultiService, config: RoleConfig, reactor: Any, hub: PushHub) -> None:
    """Accept subscribers on every ``push.listen`` endpoint."""
    factory: Any = hub.factory()
    certificate = _certificate(config)
    if certificate is not None:
        authority = _authority(config)
        # With a CA: mutual TLS, subscribers present a certificate it signed.
        options = ssl.CertificateOptions(
            privateKey=certificate.privateKey.original, certificate=certificate.original,
            verify=authority is not None, caCerts=[authority.original] if authority is not None else None,
            requireCertificate=authority is not None, acceptableProtocols=ALPN,
        )
        factory = TLSMemoryBIOFactory(options, False, factory)
    for description in config["push.listen"]:
        strports.service(description, factory, reactor=reactor).setServiceParent(parent)


class EndpointConnector:
    """Connects to one upstream's push endpoint, over TLS with ALPN ``h2`` if configured."""

    def __init__(self, reactor: Any, description: str, tls: IOpenSSLClientConnectionCreator | None) -> None:
        self.reactor = reactor
        self.description = description
        self.tls = tls

    def connect(self, factory: Factory) -> Deferred[Any]:
        endpoint = clientFromString(self.reactor, self.description)
        if self.tls is not None:
            endpoint = wrapClientTLS(self.tls, endpoint)
        return endpoint.connect(factory)


def connector(config: RoleConfig, reactor: Any, description: str) -> EndpointConnector:
    authority = _authority(config)
    tls = None
    if authority is not None:
        hostname = config["push.tls_hostname"] or _host_of(description)
        tls = ssl.optionsForClientTLS(hostname, trustRoot=authority, clientCertificate=_certificate(config),
                                      acceptableProtocols=ALPN)
    return EndpointConnector(reactor, description, tls)


def _host_of(description: str) -> str:
    parts = description.split(":")
    for part in parts[1:]:
        if part.startswith("host="):
            return part[len("host="):]
    return parts[1] if len(parts) > 1 else "localhost"


class _Clients(Service):
    """Starts and stops a tier's push clients with its role."""

    def __init__(self, clients: list[PushClient]) -> None:
        self.clients = clients

    def startService(self) -> None:
        super().startService()
        for client in self.clients:
            client.start()

    def stopService(self) -> Any:
        super().stopService()
        for client in self.clients:
            client.stop()


def push_clients(parent: MultiService, config: RoleConfig, reactor: IReactorTime, tier: str,
                 descriptions: list[str], sink: IPushSink) -> list[PushClient]:
    """One push client per upstream endpoint, started and stopped with ``parent``."""
    settings, secret = channel_settings(config), load_secret(config)
    clients = [PushClient(tier, reactor, connector(config, reactor, d), d, settings, secret, sink,
                          idle_timeout=config["push.idle_timeout"]) for d in descriptions]
    _Clients(clients).setServiceParent(parent)
    return clients


def push_hub(config: RoleConfig, reactor: IReactorTime, tier: str) -> PushHub:
    return PushHub(tier, reactor, channel_settings(config), load_secret(config), config["push.stall_timeout"])
