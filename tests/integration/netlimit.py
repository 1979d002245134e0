"""
A real, rate-limited network link for the tests: a network namespace (the
viewer's host) joined to this one by a veth pair, with a ``tbf`` qdisc on the
root namespace's end, so everything the server sends towards the viewer (its
download direction) goes through a token bucket whose rate the test changes
while the viewer plays::

    with LimitedLink(5000) as link:        # 5 Mbit/s
        run("ip", "netns", "exec", link.namespace, ...)  # the viewer
        link.limit(800)                    # now 800 kbit/s

The server listens on ``link.host``; the viewer, inside ``link.namespace``,
connects to it. Nothing else is reachable from the namespace: it has only
its loopback and its end of the pair. Needs root and iproute2 (``ip``,
``tc``); :func:`require` fails a CI run that lacks them (CI=true) and skips
elsewhere.

The bucket is small on purpose: a burst of a few KB (at least a timer tick's
worth of the rate), so a 250 ms CMAF chunk (tens of KB) cannot pass at
once and arrives at the link's rate, as over a real access link; and a queue
of a few hundred milliseconds, so a sender faster than the rate is queued
(and paced by TCP) rather than dropped.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess

#: Every namespace and link made here starts with it; what a dead process
#: left behind is removed by the next one.
PREFIX = "fbs"
#: The names made here, with the pid of the process that made them.
_NAME = re.compile(PREFIX + r"-(?:probe-)?(\d+)|" + PREFIX + r"(\d+)[hv]")
#: The private range the pairs' /30s are taken from: the test's own hosts.
SUBNET = ipaddress.IPv4Network("10.213.0.0/16")
#: The kernel's timer frequency, for the least burst that can sustain a rate.
HZ = 250
#: The least burst, bytes: above one MTU-sized frame, below any chunk.
MIN_BURST = 4096
#: How long a packet may wait in the bucket's queue before it is dropped.
LATENCY_MS = 300


class Unavailable(Exception):
    """This machine cannot make namespaces or shape traffic (not root, no iproute2)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError("ip %s: %s" % (" ".join(args), result.stderr.strip()))
    return result


def _tc(*args: str) -> None:
    result = subprocess.run(["tc", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError("tc %s: %s" % (" ".join(args), result.stderr.strip()))


def burst_bytes(rate_kbit: int) -> int:
    """The bucket: a few KB, but at least what the rate sends in one timer tick."""
    return max(MIN_BURST, rate_kbit * 1000 // 8 // HZ)


def unavailable() -> str | None:
    """Why this machine cannot run a :class:`LimitedLink`, or None if it can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces and tc need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return "%s (iproute2) is not installed" % (tool,)
    probe = "%s-probe-%d" % (PREFIX, os.getpid())
    result = _ip("netns", "add", probe, check=False)
    if result.returncode != 0:
        return "ip netns add fails here: %s" % (result.stderr.strip(),)
    _ip("netns", "del", probe, check=False)
    return None


def require() -> None:
    """Fail (in CI, CI=true) or skip (elsewhere) a test this machine cannot run."""
    import pytest

    reason = unavailable()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail("a real network limit cannot be set up on this CI machine: %s" % (reason,))
    pytest.skip("no real network limit here: %s" % (reason,))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(name: str) -> int | None:
    """The pid in a name made here (``fbs-<pid>``, ``fbs-probe-<pid>``, ``fbs<pid>h``), or None."""
    match = _NAME.fullmatch(name)
    return int(match.group(1) or match.group(2)) if match else None


def _remove_namespace(name: str) -> None:
    """Kill what still runs in ``name`` (our viewer, if a test was interrupted), then remove it."""
    pids = _ip("netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            pass
    _ip("netns", "del", name, check=False)


def remove_leftovers() -> None:
    """Remove the namespaces and links that processes now dead made here."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        pid = _owner(name)
        if pid is not None and not _alive(pid):
            _remove_namespace(name)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        # "7: fbs123h@if6: <...>"
        parts = line.split(":")
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@")[0]
        pid = _owner(name)
        if pid is not None and not _alive(pid):
            _ip("link", "del", name, check=False)


def _free_pair() -> tuple[ipaddress.IPv4Interface, ipaddress.IPv4Interface]:
    """A /30 of :data:`SUBNET` no address here is in: (host side, viewer side)."""
    used = _ip("-o", "-4", "addr", "show", check=False).stdout
    subnets = list(SUBNET.subnets(new_prefix=30))
    start = os.getpid() % len(subnets)
    for i in range(len(subnets)):
        net = subnets[(start + i) % len(subnets)]
        host, viewer = list(net.hosts())
        if " %s/" % (host,) not in used and " %s/" % (viewer,) not in used:
            return (ipaddress.IPv4Interface("%s/30" % (host,)), ipaddress.IPv4Interface("%s/30" % (viewer,)))
    raise RuntimeError("no free /30 left in %s" % (SUBNET,))


class LimitedLink:
    """
    A context manager: on entry a namespace ``fbs-<pid>`` and a veth pair
    whose root end (``fbs<pid>h``, address :attr:`host`) sends through a
    ``tbf`` of ``rate_kbit`` and whose other end (address :attr:`viewer`) is
    in the namespace; on exit all of it is gone, and whatever still ran in
    the namespace is killed. With ``upload`` the bucket is on the
    namespace's end instead: it limits what the namespace sends.
    """

    def __init__(self, rate_kbit: int, upload: bool = False) -> None:
        pid = os.getpid()
        #: Whether the bucket is on the namespace's end (what the host in
        #: it sends: a broadcaster's upload) rather than on ours.
        self.upload = upload
        self.namespace = "%s-%d" % (PREFIX, pid)
        self.device = "%s%dh" % (PREFIX, pid)
        self.peer = "%s%dv" % (PREFIX, pid)
        self.rate_kbit = rate_kbit
        self.host = ""
        self.viewer = ""
        #: (wall time, kbit/s) of every rate set, for the test's log.
        self.history: list[tuple[float, int]] = []

    def exec_args(self) -> list[str]:
        """The command prefix that runs a program inside the namespace."""
        return ["ip", "netns", "exec", self.namespace]

    def limit(self, rate_kbit: int) -> None:
        """Set the rate of the limited direction (towards the namespace, or from it), now."""
        import time

        inside = ["-n", self.namespace] if self.upload else []
        _tc(*inside, "qdisc", "replace", "dev", self.peer if self.upload else self.device, "root", "tbf",
            "rate", "%dkbit" % (rate_kbit,), "burst", str(burst_bytes(rate_kbit)),
            "latency", "%dms" % (LATENCY_MS,))
        self.rate_kbit = rate_kbit
        self.history.append((time.time(), rate_kbit))

    def qdisc(self) -> str:
        """``tc -s qdisc`` of the limited end: rate, sent bytes, drops, overlimits."""
        inside = ["-n", self.namespace] if self.upload else []
        result = subprocess.run(["tc", *inside, "-s", "qdisc", "show", "dev", self.peer if self.upload else self.device],
                                capture_output=True, text=True, timeout=30)
        return " ".join(result.stdout.split())

    def __enter__(self) -> LimitedLink:
        reason = unavailable()
        if reason is not None:
            raise Unavailable(reason)
        remove_leftovers()
        # Ours, from an earlier run of this very pid (a reused pid).
        _remove_namespace(self.namespace)
        _ip("link", "del", self.device, check=False)
        host, viewer = _free_pair()
        self.host, self.viewer = str(host.ip), str(viewer.ip)
        try:
            _ip("netns", "add", self.namespace)
            _ip("link", "add", self.device, "type", "veth", "peer", "name", self.peer)
            _ip("link", "set", self.peer, "netns", self.namespace)
            _ip("addr", "add", str(host), "dev", self.device)
            _ip("link", "set", self.device, "up")
            inside = ["netns", "exec", self.namespace, "ip"]
            _ip(*inside, "addr", "add", str(viewer), "dev", self.peer)
            _ip(*inside, "link", "set", self.peer, "up")
            _ip(*inside, "link", "set", "lo", "up")
            self.limit(self.rate_kbit)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        # Removing the namespace removes its end of the pair, and with it ours.
        _remove_namespace(self.namespace)
        _ip("link", "del", self.device, check=False)

    def __exit__(self, *exc: object) -> None:
        self.close()
