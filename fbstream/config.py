"""
Configuration: one TOML file per role (``conf/<role>.toml``) or ``conf/all.toml``
with a table per role, overridden by ``--set dotted.key=value``.

Every key a role takes is declared in :data:`SCHEMA` with its type and default;
an unknown key or a value of the wrong type is a :class:`ConfigError` naming
it, which ``twistd`` reports as a usage error rather than a traceback.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Callable
from typing import Any, TypeVar

import attrs

#: An attrs settings class (RTMPServerSettings, CacheSettings).
T = TypeVar("T", bound=attrs.AttrsInstance)

ROLES = ("pop", "dc-proxy", "encoder", "origin")
#: Roles the ``all`` role does not run: they stand beside a deployment.
OTHER_ROLES = ("loadgen", "glb")
ALL = "all"
#: Where the ``all`` role's defaults differ from the roles' own: one process
#: on one machine serves its viewers itself, the cores are the encoder's.
ALL_DEFAULTS: dict[str, dict[str, Any]] = {"pop": {"pop.workers": "1"}}


class ConfigError(Exception):
    """A configuration file or override is wrong; the message says where."""


def loopback_only(description: str) -> bool:
    """Whether an endpoint string only reaches this host (a loopback interface or host, or a unix socket)."""
    if description.startswith("unix:"):
        return True
    parts = [part.replace("\\:", ":") for part in re.split(r"(?<!\\):", description)[1:]]
    fields = dict(part.split("=", 1) for part in parts if "=" in part)
    positional = [part for part in parts if "=" not in part]
    host = fields.get("interface") or fields.get("host") or \
        (positional[0] if description.startswith(("tcp:", "tls:")) and len(positional) > 1 else "")
    return host.startswith("127.") or host in ("::1", "localhost")


def read_secret(config: RoleConfig, key: str, variable: str, what: str) -> bytes | None:
    """
    A shared secret: the file ``config[key]`` names, else ``$variable``, else
    none; at least 16 printable characters without spaces, or a
    :class:`ConfigError` naming ``what`` it is.
    """
    path = config[key]
    if path:
        try:
            with open(path, "rb") as f:
                secret = f.read().strip()
        except OSError as e:
            raise ConfigError("cannot read %s: %s" % (key, e.strerror)) from None
    else:
        secret = os.environ.get(variable, "").strip().encode()
    if not secret:
        return None
    if len(secret) < 16 or any(c <= 32 or c > 126 for c in secret):
        raise ConfigError("%s must be at least 16 printable characters, no spaces" % (what,))
    return secret


def named_urls(key: str, entries: list[str]) -> dict[str, str]:
    """``<name>=<http(s) URL>`` entries (``glb.pops``, ``steering.pops``) as {name: URL without a trailing /}."""
    named: dict[str, str] = {}
    for entry in entries:
        name, sep, url = entry.partition("=")
        name, url = name.strip(), url.strip()
        if not sep or not name or not url.startswith(("http://", "https://")):
            raise ConfigError("%s: %r is not <name>=<http(s) URL>" % (key, entry))
        named[name] = url.rstrip("/")
    return named


@attrs.frozen
class Setting:
    kind: type  # str, int, float, bool or list (of str)
    default: Any
    help: str
    #: Checks and normalises a value of another form than ``kind`` allows
    #: (``pop.workers``: "auto" or a count).
    parse: Callable[[Any, str, str], Any] | None = None


def _workers(value: Any, where: str, key: str) -> str:
    """ "auto" (one per core) or a count of at least 1, kept as text."""
    text = str(value).strip() if not isinstance(value, bool) else ""
    if text == "auto" or (text.isdigit() and int(text) >= 1):
        return text
    raise ConfigError('%s: %s must be "auto" or a number of processes (at least 1), not %r' % (where, key, value))


def worker_count(value: str) -> int:
    """The processes ``pop.workers`` asks for: "auto" is one per core this process may run on."""
    if value == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return int(value)


def _rtmp(listen: str, per_address: int = 0) -> dict[str, Setting]:
    return {
        "rtmp.listen": Setting(list, [listen], "endpoint strings to accept RTMP on (ssl:... for RTMPS)"),
        "rtmp.app": Setting(str, "live", "the RTMP application name publishers and players use"),
        "rtmp.handshake_timeout": Setting(float, 10.0, "seconds to complete handshake and connect"),
        "rtmp.idle_timeout": Setting(float, 30.0, "seconds a publisher may stay silent"),
        "rtmp.max_message_size": Setting(int, 8 * 1024 * 1024, "largest RTMP message accepted, bytes"),
        "rtmp.max_chunk_streams": Setting(int, 64, "chunk stream ids one connection may use"),
        "rtmp.max_connections": Setting(int, 1000, "RTMP connections one listener keeps open at once"),
        "rtmp.max_connections_per_address": Setting(
            int, per_address, "of those, how many one client address may hold (0: no limit)"),
        "rtmp.connects_per_second_per_address": Setting(
            float, 10.0 if per_address else 0.0, "new connections one address may open a second (0: no limit)"),
        "rtmp.player_queue_bytes": Setting(int, 8 * 1024 * 1024, "bytes a slow player may lag before it is dropped"),
        "rtmp.gop_cache_bytes": Setting(int, 32 * 1024 * 1024, "largest GOP kept for players that join late"),
        "rtmp.video_codecs": Setting(list, ["avc1", "hvc1", "av01", "vp09"], "video codecs publishers may send"),
        "rtmp.audio_codecs": Setting(list, ["AAC", "MP3", "mp4a", "Opus", ".mp3"],
                                     "audio codecs publishers may send (FLV's names, Enhanced RTMP's FourCCs)"),
        "record.dir": Setting(str, "", "record every publish to FLV in this directory (empty: off)"),
        "record.max_backlog": Setting(int, 64 * 1024 * 1024, "bytes a recording may wait for the disk before it is abandoned"),
    }


def _http(listen: str, per_address: int = 0) -> dict[str, Setting]:
    return {
        "http.listen": Setting(list, [listen], "endpoint strings for HTTP (/metrics and the role's URLs)"),
        "http.max_connections": Setting(int, 8192, "HTTP connections open at once per listener (keep below ulimit -n)"),
        "http.max_connections_per_address": Setting(int, per_address, "of those, from one client address (0: no limit)"),
        "http.head_timeout": Setting(float, 10.0, "seconds a request's head may take to arrive, however it trickles"),
        "http.access_log": Setting(str, "", "where each request is logged, in the combined log format: empty for "
                                            "the role's own log, a file's path (written directly: cheaper), or off"),
    }


ENCODER: dict[str, Setting] = {
    "encoder.ladder": Setting(list, ["720:2500", "480:1000", "360:600", "240:300"],
                              "video renditions as <height>:<kbps>; taller than the source are skipped"),
    "encoder.audio_bitrate": Setting(int, 64000, "AAC bitrate, bits per second"),
    "encoder.preset": Setting(str, "veryfast", "x264 preset (with tune=zerolatency)"),
    "encoder.chunk_ms": Setting(int, 250, "CMAF chunk (moof+mdat) length inside each 1 s segment"),
    "encoder.window_seconds": Setting(float, 120.0, "live DASH/HLS window (timeShiftBufferDepth)"),
    "encoder.max_lag_ms": Setting(int, 3000, "transcoding backlog past which video is dropped to the next keyframe"),
    "encoder.max_streams": Setting(int, 4, "streams transcoded at once (worker threads)"),
    "encoder.target_latency": Setting(float, 1.2, "seconds behind live DASH players aim to play "
                                                  "(MPD ServiceDescription and suggestedPresentationDelay)"),
    "encoder.part_hold_back": Setting(float, 1.5, "LL-HLS PART-HOLD-BACK: seconds behind the newest part HLS "
                                                  "players play (at least three parts)"),
    "encoder.hold_segments": Setting(int, 2, "a request for a segment up to this many past the live edge waits for "
                                             "it to start; further ahead it is a 404 no cache keeps"),
    "encoder.max_held": Setting(int, 10_000, "requests waiting at the live edge at once (more: 503)"),
    "encoder.stall_timeout": Setting(float, 30.0, "a request for a growing segment that does not read for this "
                                                 "long is dropped"),
    "steering.server": Setting(str, "", "a DASH Content Steering server live MPDs name (the glb role's "
                                        "/v1/steering URL, as players reach it), with a BaseURL per PoP of "
                                        "steering.pops (empty: none)"),
    "steering.pops": Setting(list, [], "<name>=<base URL> of each PoP players may be steered to, the first the "
                                       "default (the glb role's glb.pops)"),
    "archive.dir": Setting(str, "archive", "where segments are archived for replay (empty: no archive)"),
    "archive.retention_hours": Setting(float, 168.0, "archived videos older than this are deleted"),
}

CACHE: dict[str, Setting] = {
    "cache.max_bytes": Setting(int, 512 * 1024 * 1024, "bytes the cache holds (LRU)"),
    # Longer than the encoder holds a request for a segment at the live edge
    # (6 s at most): a held request is not a slow one.
    "cache.lock_timeout": Setting(float, 8.0, "seconds waiters wait for a first byte before one more upstream try"),
    "cache.upstream_timeout": Setting(float, 10.0, "an upstream answer (or body) silent this long is a 504"),
    "cache.stall_timeout": Setting(float, 30.0, "a viewer that does not read for this long is dropped"),
    "cache.max_fetches": Setting(int, 10_000, "objects fetched upstream at once; more misses are answered 503"),
}

POP: dict[str, Setting] = {
    "pop.cache_hosts": Setting(list, ["tcp:127.0.0.1:8084"], "the cache layer's hosts, sharded by URL"),
    "pop.cache_listen": Setting(list, ["tcp:8084"], "this PoP's cache layer listener ([] for none)"),
    "pop.origins": Setting(list, ["tcp:127.0.0.1:8083"], "the origins the cache layer fetches from"),
    "pop.proxy_max_bytes": Setting(int, 64 * 1024 * 1024, "the proxy layer's own small cache, bytes"),
    "pop.player_dir": Setting(str, "web/node_modules", "where npm installed dash.js and hls.js for the web page"),
    "pop.workers": Setting(str, "auto", 'processes serving the viewers\' HTTP listeners (tcp: only), sharing their '
                                        'sockets, each with its own proxy layer ("auto": one per core; 1: this '
                                        'process; the all role: 1 unless set)',
                           parse=_workers),
}

def _push(listen: list[str] | None, upstreams: tuple[str, list[str], str] | None) -> dict[str, Setting]:
    """The push channel's settings: a publisher's (``listen``), a subscriber's (``upstreams``), or both."""
    settings = {
        "push.secret_file": Setting(str, "", "file holding the push channel's shared secret, 16+ characters "
                                             "(empty: $FBSTREAM_PUSH_SECRET; unset: none, for loopback only)"),
        "push.tls_cert": Setting(str, "", "PEM certificate: TLS with ALPN h2 on push.listen, and the client "
                                          "certificate presented upstream (empty: h2 over plain TCP)"),
        "push.tls_key": Setting(str, "", "PEM private key of push.tls_cert (empty: in the same file)"),
        "push.tls_ca": Setting(str, "", "PEM CA: subscribers must present a certificate it signed (mutual TLS), "
                                        "and upstreams are verified against it (empty: no TLS upstream)"),
        "push.tls_hostname": Setting(str, "", "the name upstream certificates are checked for (empty: the "
                                              "endpoint's host)"),
        "push.window": Setting(int, 8 * 1024 * 1024, "HTTP/2 flow-control window a subscriber opens, bytes "
                                                     "(a segment's worth)"),
        "push.max_pushes": Setting(int, 256, "pushes open at once on one connection"),
        "push.ping_interval": Setting(float, 1.0, "seconds between HTTP/2 PINGs on a push connection"),
        "push.ping_timeout": Setting(float, 4.0, "a push connection whose PING is unanswered this long is dead "
                                                 "(and one not closed this long after our goodbye is cut)"),
        "push.stall_timeout": Setting(float, 5.0, "a push that makes no progress this long is given up "
                                                  "(the subscriber fetches that object)"),
    }
    if listen is not None:
        settings["push.listen"] = Setting(list, listen, "endpoint strings subscribers of the push channel "
                                                        "connect to ([]: no push channel)")
    if upstreams is not None:
        key, default, help = upstreams
        settings[key] = Setting(list, default, help)
        settings["push.idle_timeout"] = Setting(float, 30.0, "a stream no one has asked for this long is "
                                                             "unsubscribed")
        settings["push.wait"] = Setting(float, 1.5, "a request for a segment not pushed yet of a stream whose "
                                                    "pushes flow, or an LL-HLS blocking reload no pushed playlist "
                                                    "version answers yet, waits this long for its push, then is "
                                                    "fetched")
    return settings


def _relay(timeout: float) -> dict[str, Setting]:
    return {
        "relay.connect_timeout": Setting(float, 5.0, "seconds to reach the next hop before trying another"),
        "relay.publish_timeout": Setting(float, timeout, "seconds the next hop may take to accept a publish"),
        "relay.pull_linger": Setting(float, 5.0, "seconds an RTMP pull outlives its last player"),
    }


REGISTRY: dict[str, Setting] = {
    "registry.backend": Setting(str, "embedded", "where stream ownership lives: embedded (one process) or etcd"),
    "registry.etcd": Setting(list, ["http://127.0.0.1:2379"], "etcd client URLs (JSON gateway), tried in order"),
    "registry.prefix": Setting(str, "/fbstream", "the etcd key prefix of this deployment"),
    "registry.lease_seconds": Setting(float, 10.0, "an owner silent this long loses its streams to another encoder"),
}

TOKENS: dict[str, Setting] = {
    "tokens.keys_file": Setting(str, "", "file of <id>:<hex secret> token keys, newest first "
                                         "(empty: $FBSTREAM_TOKEN_KEYS)"),
    "tokens.required": Setting(bool, True, "refuse publishes without a valid stream token"),
}

INGEST: dict[str, Setting] = {
    "encoder.name": Setting(str, "encoder-1", "this encoder's name in the registry"),
    "encoder.advertise_http": Setting(str, "tcp:127.0.0.1:8082",
                                      "the endpoint the origin reaches this encoder's HTTP at"),
    "ingest.grace_seconds": Setting(float, 30.0, "a live video waits this long for its broadcaster to come back"),
    "ingest.takeover_silence": Setting(float, 3.0,
                                       "a second publisher replaces the first only after it is silent this long"),
    "ingest.claim_wait": Setting(float, 15.0,
                                 "seconds a publish waits for a dead owner's lease to lapse before it is refused"),
}

API: dict[str, Setting] = {
    "api.key_file": Setting(str, "", "file holding the live API key (empty: $FBSTREAM_API_KEY; unset: API off)"),
    "api.datacenter": Setting(str, "dc1", "the data center new live videos are assigned to"),
    "api.token_ttl_hours": Setting(float, 24.0, "how long a stream token lets its broadcaster publish"),
    "api.rtmp_url": Setting(str, "rtmp://127.0.0.1:1935/live", "the RTMP ingest URL given to broadcasters"),
    "api.rtmps_url": Setting(str, "", "the RTMPS ingest URL given to broadcasters (empty: none)"),
    "api.playback_url": Setting(str, "http://127.0.0.1:8080", "the base of the playback URLs given out"),
}

GLB_REPORTS: dict[str, Setting] = {
    "glb.url": Setting(str, "", "the global load balancer this PoP reports its load to, e.g. http://glb:8088, "
                                "and whose map names the PoP in the live API's playback URLs (empty: none)"),
    "glb.name": Setting(str, "pop1", "this PoP's name at the balancer (one of its glb.pops)"),
    "glb.capacity": Setting(float, 5000.0, "viewers this PoP can serve; the balancer fills it to its headroom"),
    "glb.secret_file": Setting(str, "", "the balancer's bearer secret (empty: $FBSTREAM_GLB_SECRET; unset: none)"),
    "glb.player_url": Setting(str, "", "the balancer's URL as players reach it, for the page's map and round "
                              "trips (empty: glb.url; \"off\": the page asks no balancer)"),
    "glb.redirect": Setting(bool, True, "once this PoP carries its capacity, a new viewer's first manifest request "
                            "is answered 302 to the PoP the balancer names for the viewer's network"),
}

SCHEMA: dict[str, dict[str, Setting]] = {
    "pop": {
        # Broadcasters reach the PoP; behind it, each client carries many of them.
        **_rtmp("tcp:1935", per_address=50), **_http("tcp:8080", per_address=1024), **POP, **CACHE, **_relay(60.0), **API, **TOKENS, **REGISTRY,
        **_push(None, ("push.origins", [],
                     "the origins' push endpoints the cache layer subscribes at, one connection each "
                     "([]: fetch only)")),
        **GLB_REPORTS,
        "relay.dc_proxies": Setting(list, ["dc1=tcp:127.0.0.1:1936"],
                                    "<datacenter>=<endpoint> of each dc-proxy, tried in order "
                                    "([]: publish to this PoP's own hub, no relay)"),
    },
    "dc-proxy": {
        **_rtmp("tcp:1936"), **_http("tcp:8081"), **_relay(20.0),
        "relay.encoders": Setting(list, ["tcp:127.0.0.1:1937"], "the encoders' RTMP endpoints (the hash ring)"),
        "relay.virtual_nodes": Setting(int, 160, "points per encoder on the hash ring"),
    },
    "encoder": {**_rtmp("tcp:1937"), **_http("tcp:8082"), **ENCODER, **INGEST, **TOKENS, **REGISTRY,
                **_push([], None)},
    "loadgen": {
        **_http("tcp:8090:interface=127.0.0.1"),
        "loadgen.name": Setting(str, "", "this agent's name in reports (empty: the host's name)"),
        "loadgen.secret_file": Setting(str, "", "a file with the bearer secret the controller presents (empty: "
                                                "$FBSTREAM_LOAD_SECRET; with neither, only loopback may listen)"),
        "loadgen.max_viewers": Setting(int, 20_000, "simulated viewers this agent runs at most"),
    },
    "glb": {
        **_http("tcp:8088:interface=127.0.0.1"),
        "glb.pops": Setting(list, ["pop1=http://127.0.0.1:8080"], "<name>=<base URL> of each PoP, as viewers "
                                                                  "reach it; the names are DASH pathways"),
        "glb.secret_file": Setting(str, "", "the bearer secret PoPs present with their reports, and /v1/state "
                                            "asks for (empty: $FBSTREAM_GLB_SECRET; with neither, only loopback "
                                            "may listen)"),
        "glb.seed_file": Setting(str, "", "TOML of round-trip times assumed for networks not measured yet: "
                                          '["<prefix>"] then <pop> = <ms> (empty: none)'),
        "glb.predictor": Setting(str, "spline", "how each network's viewers are predicted: spline, linear or "
                                                "reactive (none)"),
        "glb.lead": Setting(float, 1.0, "seconds from a decision until its plan steers viewers: the time a new map "
                                        "takes to reach players (the reports' age is measured)"),
        "glb.interval": Setting(float, 1.0, "seconds between plans"),
        "glb.window": Setting(float, 3.0, "seconds of reports the prediction fits"),
        "glb.headroom": Setting(float, 0.9, "the share of each PoP's capacity plans fill"),
        "glb.down_after": Setting(float, 3.0, "a PoP silent this long is down"),
        "glb.hysteresis_ms": Setting(float, 10.0, "milliseconds the PoPs a network's new viewers last went to "
                                                  "are favoured by"),
        "glb.max_networks": Setting(int, 100_000, "client networks whose round-trip times are kept"),
        "glb.steering_ttl": Setting(int, 5, "seconds players keep a map or a steering answer"),
    },
    "origin": {
        **_http("tcp:8083"),
        "origin.upstreams": Setting(list, ["tcp:127.0.0.1:8082"],
                                    "the encoders' HTTP endpoints (when the registry does not know the owner)"),
        **CACHE,
        **REGISTRY,
        **_push([],
                ("push.upstreams", [],
                 "the encoders' push endpoints, each subscribed to for the streams the PoPs subscribe to "
                 "([]: fetch only)")),
    },
}


@attrs.frozen
class RoleConfig:
    """The checked settings of one role: ``config["rtmp.listen"]``."""

    role: str
    values: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]


def defaults(role: str) -> dict[str, Any]:
    return {key: setting.default for key, setting in SCHEMA[role].items()}


def default(key: str) -> Any:
    """
    ``key``'s default where no role sets its own (the most roles' default:
    the PoP's per-address limits are the PoP's): what the settings classes
    (``RTMPServerSettings``, ``CacheSettings``, the hub's) default to, so the
    schema is the one place a default is written.
    """
    found = [SCHEMA[role][key].default for role in ROLES if key in SCHEMA[role]]
    if not found:
        raise KeyError(key)
    value = max(found, key=lambda v: sum(1 for other in found if other == v))
    return list(value) if isinstance(value, list) else value


def settings(cls: type[T], config: RoleConfig, prefix: str, **overrides: Any) -> T:
    """
    An attrs settings class from ``config``: each field ``name`` from
    ``<prefix>.<name>``, or from ``overrides``; a field the schema does not
    have keeps its class default.
    """
    values = {}
    for field in attrs.fields(cls):
        key = "%s.%s" % (prefix, field.name)
        if field.name in overrides:
            values[field.name] = overrides[field.name]
        elif key in config.values:
            values[field.name] = config[key]
    return cls(**values)


def describe() -> str:
    """Every setting, its type, help and default (each role's where they differ): for ``--help``."""
    keys: dict[str, list[str]] = {}
    for role in ROLES + OTHER_ROLES:
        for key in SCHEMA[role]:
            keys.setdefault(key, []).append(role)
    lines = []
    for key in sorted(keys):
        roles = keys[key]
        setting = SCHEMA[roles[0]][key]
        by_role = {role: SCHEMA[role][key].default for role in roles}
        if len({repr(v) for v in by_role.values()}) == 1:
            shown = json.dumps(setting.default)  # TOML's syntax, for these values
        else:
            shown = "; ".join("%s %s" % (role, json.dumps(value)) for role, value in by_role.items())
        lines.append("  %s (%s; %s): %s. Default: %s" % (
            key, setting.kind.__name__, ", ".join(roles), setting.help, shown))
    return "\n".join(lines)




def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = prefix + key
        if isinstance(value, dict):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _coerce(role: str, key: str, value: Any, where: str, raw: str | None = None) -> Any:
    setting = SCHEMA[role].get(key)
    if setting is None:
        raise ConfigError("%s: unknown setting %r for role %s" % (where, key, role))
    if setting.parse is not None:
        return setting.parse(value, where, key)
    kind = setting.kind
    if raw is not None and kind in (str, list) and not isinstance(value, (str, list)):
        value = raw  # --set rtmp.listen=5 means the text "5"
    if kind is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError("%s: %s must be a string or a list of strings" % (where, key))
        return list(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise ConfigError(
            "%s: %s must be %s, not %r" % (where, key, kind.__name__, value)
        )
    if isinstance(value, (int, float)) and value < 0:
        raise ConfigError("%s: %s must not be negative" % (where, key))
    return value


def parse_override(text: str) -> tuple[str, Any, str]:
    """
    Split ``dotted.key=value`` into the key, the value (TOML if it parses, else
    the text) and the raw text.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError("--set %r: expected dotted.key=value" % (text,))
    try:
        value = tomllib.loads("v = " + raw)["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value, raw


def load_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError("cannot read %s: %s" % (path, e.strerror)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("%s is not valid TOML: %s" % (path, e)) from None


def default_path(role: str) -> str | None:
    """``conf/<role>.toml`` beside the working directory, if there is one."""
    path = os.path.join("conf", role + ".toml")
    return path if os.path.exists(path) else None


def load(role: str, path: str | None, overrides: list[str]) -> dict[str, RoleConfig]:
    """
    The configuration of each role that ``role`` runs (every role for ``all``).

    With no ``path`` the role's file under ``conf/`` is used if present, else the
    built-in defaults (which the shipped files repeat).
    """
    if role != ALL and role not in ROLES + OTHER_ROLES:
        raise ConfigError("unknown role %r (choose from %s)" % (role, ", ".join(ROLES + OTHER_ROLES + (ALL,))))
    if path is None:
        path = default_path(role)
    table = load_file(path) if path else {}
    where = path or "defaults"
    roles = ROLES if role == ALL else (role,)
    values = {r: defaults(r) for r in roles}
    if role == ALL:
        for r, own in ALL_DEFAULTS.items():
            values[r].update(own)

    def apply(flat: dict[str, Any], where: str, raw: str | None = None) -> None:
        for dotted, value in flat.items():
            if role == ALL:
                target, _, key = dotted.partition(".")
                if target not in values:
                    raise ConfigError(
                        "%s: %r does not start with a role (%s)" % (where, dotted, ", ".join(ROLES))
                    )
            else:
                target, key = role, dotted
            values[target][key] = _coerce(target, key, value, where, raw)

    apply(_flatten(table), where)
    for text in overrides:
        key, value, raw = parse_override(text)
        apply({key: value}, "--set " + key, raw)
    return {r: RoleConfig(r, values[r]) for r in roles}
