"""
Prometheus metrics of every role, and the ``/metrics`` resource that serves them.

Metrics live in the process's default registry with a ``role`` label, so the
``all`` role (every role in one process) exposes each role's figures apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Info
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.twisted import MetricsResource
from twisted.web.resource import IResource

from fbstream import __version__

BUILD = Info("fbstream_build", "fbstream version")
BUILD.info({"version": __version__})

ROLE_UP = Gauge("fbstream_role_up", "1 for each role this process runs", ["role"])

RTMP_CONNECTIONS = Gauge(
    "fbstream_rtmp_connections_open", "Open RTMP connections", ["role"]
)
RTMP_CONNECTIONS_TOTAL = Counter(
    "fbstream_rtmp_connections", "RTMP connections accepted", ["role"]
)
RTMP_CONNECTIONS_REFUSED = Counter(
    "fbstream_rtmp_connections_refused",
    "RTMP connections closed at once: rtmp.max_connections open, or rtmp.max_connections_per_address from one address",
    ["role"],
)
RTMP_PROTOCOL_ERRORS = Counter(
    "fbstream_rtmp_protocol_errors",
    "RTMP connections closed for a protocol error or hostile input",
    ["role"],
)
RTMP_STREAMS_LIVE = Gauge(
    "fbstream_rtmp_streams_live", "Streams being published", ["role"]
)
RTMP_PUBLISH_REJECTED = Counter(
    "fbstream_rtmp_publish_rejected",
    "Publish attempts refused",
    ["role", "reason"],
)
RTMP_MEDIA_MESSAGES = Counter(
    "fbstream_rtmp_media_messages",
    "Audio, video and data messages received from publishers",
    ["role", "kind"],
)
RTMP_MEDIA_BYTES = Counter(
    "fbstream_rtmp_media_bytes", "Media payload bytes received from publishers", ["role"]
)
RTMP_PLAYERS = Gauge("fbstream_rtmp_players", "RTMP players attached", ["role"])
RTMP_PLAYERS_DROPPED = Counter(
    "fbstream_rtmp_players_dropped",
    "RTMP players disconnected for falling too far behind",
    ["role"],
)
RECORDER_BYTES = Counter(
    "fbstream_recorder_bytes", "Bytes written by FLV recorders", ["role"]
)
RECORDER_FAILURES = Counter(
    "fbstream_recorder_failures", "Recordings abandoned (disk error or backlog)", ["role"]
)
RELAY_SESSIONS = Gauge(
    "fbstream_relay_sessions", "Publishes being relayed to the next hop", ["role"]
)
RELAY_HOP_FAILURES = Counter(
    "fbstream_relay_hop_failures",
    "Next hops that could not be reached or passed the publish on (each tried the next)",
    ["role"],
)
RELAY_PAUSES = Counter(
    "fbstream_relay_pauses",
    "Times a broadcaster's connection was paused because the next hop was behind",
    ["role"],
)


class _Gathered:
    """
    This process's metrics and, once it runs worker processes
    (``pop.workers``), theirs: each worker writes its figures to files in a
    directory (prometheus_client's multiprocess mode), which this process
    reads at each scrape and adds, family by family, to its own. Counters are
    summed over the workers, the dead ones included; a gauge keeps a ``pid``
    label.
    """

    def __init__(self) -> None:
        self.directories: list[str] = []

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        sources: list[Iterable[Metric]] = [REGISTRY.collect()]
        for directory in self.directories:
            sources.append(MultiProcessCollector(None, path=directory).collect())
        for source in sources:
            for family in source:
                known = families.get(family.name)
                if known is None:
                    families[family.name] = family
                else:  # one family per name in the exposition, one sample per name and labels
                    index = {(s.name, tuple(sorted(s.labels.items()))): i for i, s in enumerate(known.samples)}
                    for sample in family.samples:
                        at = index.get((sample.name, tuple(sorted(sample.labels.items()))))
                        if at is None:
                            known.samples.append(sample)
                        else:
                            known.samples[at] = known.samples[at]._replace(value=known.samples[at].value + sample.value)
        return iter(families.values())


GATHERED = _Gathered()


def add_worker_metrics(directory: str) -> None:
    """Serve, with this process's metrics, those the workers write in ``directory``."""
    GATHERED.directories.append(directory)


def remove_worker_metrics(directory: str) -> None:
    if directory in GATHERED.directories:
        GATHERED.directories.remove(directory)


def metrics_resource() -> IResource:
    """The twisted.web resource for ``/metrics``."""
    return MetricsResource(registry=GATHERED)
