"""
A data center of real processes on loopback: ``twistd fbstream`` for every
role, an etcd server, each on free ports, each killable.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.error
import urllib.request

from .conftest import ROOT, free_port, serving
from .test_twistd import twistd

TOKEN_KEYS = "k1:" + "5e" * 32
API_KEY = "test-api-key"


def endpoints(ports):
    """The loopback endpoints of ``ports`` (``json.dumps`` makes them a list setting)."""
    return ["tcp:127.0.0.1:%d" % (port,) for port in ports]


def http(method, url, body=None, key=API_KEY):
    request = urllib.request.Request(url, data=body, method=method)
    if key is not None:
        request.add_header("Authorization", "Bearer " + key)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError as e:
        return 0, str(e).encode()


class Node:
    def __init__(self, name, role, args, directory):
        self.name = name
        self.role = role
        self.args = args
        self.directory = directory
        self.process = None
        self.http = free_port()
        #: Where it takes RTMP and RTMPS, if its role does (set by Topology).
        self.rtmp: int | None = None
        self.rtmps: int | None = None
        #: Where it takes push subscribers, if it does (see :meth:`push_listen`).
        self.push: int | None = None
        #: The reactor its twistd runs ("asyncio", or the platform's default).
        self.reactor = "default"

    def push_listen(self, push):
        """The settings that open its push channel on a port of its own (none without ``push``)."""
        if not push:
            return []
        self.push = free_port()
        return ["--set", "push.listen=tcp:%d:interface=127.0.0.1" % (self.push,)]

    def start(self):
        env = dict(os.environ, FBSTREAM_TOKEN_KEYS=TOKEN_KEYS, FBSTREAM_API_KEY=API_KEY, PYTHONPATH=ROOT)
        log = open(os.path.join(self.directory, self.name + ".log"), "ab")
        self.process = subprocess.Popen(
            [twistd(), "-n", "--pidfile=", *(["--reactor=asyncio"] if self.reactor == "asyncio" else []), "fbstream",
             "--role", self.role, "--config", os.path.join(ROOT, "conf", self.role + ".toml"),
             "--set", "http.listen=tcp:%d:interface=127.0.0.1" % (self.http,), *self.args],
            cwd=self.directory, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        if serving("http://127.0.0.1:%d/metrics" % (self.http,), 20, self.process):
            return self
        if self.process.poll() is not None:
            raise RuntimeError("%s exited; see %s.log" % (self.name, self.name))
        raise RuntimeError("%s did not start" % (self.name,))

    def kill(self):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def restart(self):
        """Stop the process as an operator does (SIGTERM, waiting for it), and start it again."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        return self.start()

    def log(self):
        with open(os.path.join(self.directory, self.name + ".log"), "rb") as f:
            return f.read().decode("utf-8", "replace")


class Topology:
    """
    A data center on one etcd: by default 2 PoPs, 2 dc-proxies, 3 encoders
    and an origin. With ``push``, the push channel runs between the tiers:
    each encoder and origin listens for subscribers, each origin subscribes
    at every encoder, and each PoP's cache layer at the origins (one per
    stream, by the ring of :meth:`push_origins`).
    """

    def __init__(self, directory, etcd_url, tls, lease=3.0, grace=30.0, *,
                 encoders=3, dc_proxies=2, origins=1, pops=2, push=False, reactor="default"):
        self.directory = str(directory)
        self.reactor = reactor
        key, cert = tls
        prefix = "/t%d" % (free_port(),)
        registry = ["registry.backend=etcd", "registry.etcd=%s" % (etcd_url,),
                    "registry.prefix=%s" % (prefix,), "registry.lease_seconds=%s" % (lease,)]
        self.encoder_rtmp = [free_port() for _ in range(encoders)]
        self.dc_rtmp = [free_port() for _ in range(dc_proxies)]
        self.encoders = []
        for i, port in enumerate(self.encoder_rtmp):
            node = Node("encoder%d" % (i,), "encoder", [], self.directory)
            node.rtmp = port
            node.args = [
                "--set", "rtmp.listen=tcp:%d:interface=127.0.0.1" % (port,),
                "--set", "encoder.name=encoder%d" % (i,),
                "--set", "encoder.advertise_http=tcp:127.0.0.1:%d" % (node.http,),
                "--set", "encoder.ladder=[\"240:300\"]",
                "--set", "archive.dir=archive%d" % (i,),
                "--set", "ingest.grace_seconds=%s" % (grace,),
                "--set", "ingest.claim_wait=%s" % (lease * 3,),
                *[a for r in registry for a in ("--set", r)],
                *node.push_listen(push),
            ]
            self.encoders.append(node)
        ring = "relay.encoders=[%s]" % (",".join('"tcp:127.0.0.1:%d"' % p for p in self.encoder_rtmp),)
        self.dc_proxies = []
        for i, port in enumerate(self.dc_rtmp):
            node = Node("dcproxy%d" % (i,), "dc-proxy",
                        ["--set", "rtmp.listen=tcp:%d:interface=127.0.0.1" % (port,), "--set", ring,
                         "--set", "relay.connect_timeout=2"], self.directory)
            node.rtmp = port
            self.dc_proxies.append(node)
        self.origins = []
        for i in range(origins):
            node = Node("origin" if origins == 1 else "origin%d" % (i,), "origin", [], self.directory)
            node.args = [
                "--set", "origin.upstreams=tcp:127.0.0.1:%d" % (self.encoders[0].http,),
                *[a for r in registry for a in ("--set", r)],
                *node.push_listen(push)]
            if push:
                node.args += ["--set", "push.upstreams=%s" % (json.dumps(endpoints(e.push for e in self.encoders)),)]
            self.origins.append(node)
        self.origin = self.origins[0]
        self.pops = []
        for i in range(pops):
            rtmp, rtmps, cache = free_port(), free_port(), free_port()
            # Each PoP tries its "own" dc-proxy first.
            order = self.dc_rtmp if i == 0 else self.dc_rtmp[::-1]
            dcs = "relay.dc_proxies=[%s]" % (",".join('"dc1=tcp:127.0.0.1:%d"' % p for p in order),)
            node = Node("pop%d" % (i,), "pop", [
                "--set", 'rtmp.listen=["tcp:%d:interface=127.0.0.1", "ssl:%d:interface=127.0.0.1:privateKey=%s:certKey=%s"]'
                % (rtmp, rtmps, key, cert),
                "--set", dcs, "--set", "relay.connect_timeout=2",
                "--set", "pop.cache_listen=tcp:%d:interface=127.0.0.1" % (cache,),
                "--set", "pop.cache_hosts=tcp:127.0.0.1:%d" % (cache,),
                "--set", "pop.origins=%s" % (json.dumps(endpoints(o.http for o in self.origins)),),
                "--set", "pop.player_dir=%s" % (os.path.join(ROOT, "web", "node_modules"),),
                *[a for r in registry for a in ("--set", r)]], self.directory)
            if push:
                node.args += ["--set", "push.origins=%s" % (json.dumps(self.push_origins()),)]
            node.rtmp = rtmp
            node.rtmps = rtmps
            self.pops.append(node)

    def push_origins(self):
        """The PoPs' ``push.origins``: the origins' push endpoints, as the PoPs' ring names them."""
        return endpoints(o.push for o in self.origins)

    def nodes(self):
        return [*self.encoders, *self.dc_proxies, *self.origins, *self.pops]

    def start(self):
        """Start every node; if one fails, stop those started and fail."""
        try:
            for node in self.nodes():
                node.reactor = self.reactor
                node.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        for node in self.nodes():
            node.kill()


def origin_pop_args(name, origin, glb_url=None, capacity=0, player_dir=False):
    """
    The settings of a PoP of its own (no RTMP, one process) whose cache
    layer fetches from ``origin`` (a port) and which reports to the balancer
    at ``glb_url`` (if any) as ``name``, of ``capacity`` viewers.
    """
    cache = free_port()
    args = ["--set", "rtmp.listen=[]", "--set", "relay.dc_proxies=[]", "--set", "pop.workers=1",
            "--set", "pop.cache_listen=tcp:%d:interface=127.0.0.1" % (cache,),
            "--set", "pop.cache_hosts=tcp:127.0.0.1:%d" % (cache,),
            "--set", "pop.origins=tcp:127.0.0.1:%d" % (origin,)]
    if glb_url:
        args += ["--set", "glb.url=" + glb_url, "--set", "glb.name=" + name, "--set", "glb.capacity=%d" % (capacity,)]
    if player_dir:
        args += ["--set", "pop.player_dir=%s" % (os.path.join(ROOT, "web", "node_modules"),)]
    return args


def start_balancer(tmp_path, glb_port, urls, seed):
    """A glb role on ``glb_port`` (in this process, started) for the PoPs ``urls`` ({name: URL}), seeded with ``seed`` (TOML)."""
    from fbstream.config import load
    from fbstream.roles.build import build_role

    from .conftest import ROLES_REACTOR

    path = tmp_path / "seed.toml"
    path.write_text(seed)
    glb = build_role(load("glb", None, [
        "http.listen=tcp:%d:interface=127.0.0.1" % (glb_port,),
        "glb.pops=%s" % (json.dumps(["%s=%s" % item for item in urls.items()]),),
        "glb.seed_file=%s" % (path,),
    ])["glb"], ROLES_REACTOR)
    glb.startService()
    return glb


def stop_balancer(glb):
    """
    Stop the balancer ``start_balancer`` started as if its process died: its
    port closed, and every connection to it too (the PoPs' reports and the
    live API's questions hold theirs open; stopping the service alone
    would leave them answered).
    """
    from twisted.internet import defer

    stopped = defer.maybeDeferred(glb.stopService)
    for wrapper in list(glb.site.limits.protocols):
        wrapper.transport.abortConnection()
    return stopped
