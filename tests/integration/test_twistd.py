"""The real ``twistd fbstream`` binary: every role up, the demo stream playable."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import defer
from twisted.python.failure import Failure

from .conftest import ROOT, eventually, free_port, run, serving, sleep, tool


def twistd() -> str:
    """The twistd beside this Python (a virtualenv's), else the one on PATH."""
    path = os.path.join(os.path.dirname(sys.executable), "twistd")
    if not os.path.exists(path):
        path = shutil.which("twistd") or ""
    assert os.path.exists(path), "twistd is not installed"
    return path


@pytest_twisted.inlineCallbacks
def wait_for_ok(url, seconds):
    """Poll ``url`` until it answers 200 (or ``seconds`` pass); return the last code."""
    codes = []

    @defer.inlineCallbacks
    def ok():
        response = yield treq.get(url)
        yield response.content()
        codes.append(response.code)
        return response.code == 200

    try:
        yield eventually(ok, seconds, what=url, interval=0.5)
    except AssertionError:
        pass  # the caller says what failed, with the server's log
    return codes[-1] if codes else None


@contextlib.contextmanager
def all_role_process(tmp_path, reactor="default", extra=("--demo",), env=None, pop_interfaces=("127.0.0.1",),
                     stderr=None, push=True, ports=None, rtmp_interfaces=("127.0.0.1",)):
    """
    ``twistd fbstream --role=all`` on free ports, running; yields its ports and
    log file, and stops it (SIGTERM) afterwards. The PoP's viewers' HTTP
    listens on each of ``pop_interfaces``, on the same port. ``stderr``: a
    path for the process's standard error (where the login link goes).
    ``push``: the push channel between the tiers (else TTL pulls only).
    ``ports``: some of the ports, chosen by the caller (the others are free ones).
    ``rtmp_interfaces``: where the PoP's RTMP listens, on the same port.
    """
    ports = {key: free_port() for key in ("rtmp", "pop", "dc-proxy", "encoder", "origin", "cache",
                                          "encoder-push", "origin-push") if key not in (ports or {})} | (ports or {})
    dc_rtmp, encoder_rtmp = free_port(), free_port()
    args = [twistd(), "-n", "--pidfile=", "--logfile=%s" % (tmp_path / "twistd.log",)]
    if reactor == "asyncio":
        args.append("--reactor=asyncio")
    args += [
        "fbstream", "--role=all", *extra,
        "--config", os.path.join(ROOT, "conf", "all.toml"),
        # One interface as a plain endpoint string: tests find the process by it.
        "--set", "pop.rtmp.listen=%s" % ("tcp:%d:interface=%s" % (ports["rtmp"], rtmp_interfaces[0])
                                          if len(rtmp_interfaces) == 1 else json.dumps(
            ["tcp:%d:interface=%s" % (ports["rtmp"], interface) for interface in rtmp_interfaces]),),
        "--set", "dc-proxy.rtmp.listen=tcp:%d:interface=127.0.0.1" % (dc_rtmp,),
        "--set", "encoder.rtmp.listen=tcp:%d:interface=127.0.0.1" % (encoder_rtmp,),
        # What points at a moved port moves with it.
        "--set", "pop.relay.dc_proxies=dc1=tcp:127.0.0.1:%d" % (dc_rtmp,),
        "--set", "dc-proxy.relay.encoders=tcp:127.0.0.1:%d" % (encoder_rtmp,),
        "--set", "encoder.encoder.advertise_http=tcp:127.0.0.1:%d" % (ports["encoder"],),
        "--set", "encoder.archive.dir=%s" % (tmp_path / "archive",),
        "--set", "pop.pop.cache_listen=tcp:%d:interface=127.0.0.1" % (ports["cache"],),
        "--set", "pop.pop.cache_hosts=tcp:127.0.0.1:%d" % (ports["cache"],),
        "--set", "pop.pop.origins=tcp:127.0.0.1:%d" % (ports["origin"],),
        "--set", "origin.origin.upstreams=tcp:127.0.0.1:%d" % (ports["encoder"],),
        # The push channel: encoder -> origin -> the PoP's cache layer.
        "--set", ("encoder.push.listen=tcp:%d:interface=127.0.0.1" % (ports["encoder-push"],)) if push
        else "encoder.push.listen=[]",
        "--set", ("origin.push.listen=tcp:%d:interface=127.0.0.1" % (ports["origin-push"],)) if push
        else "origin.push.listen=[]",
        "--set", "origin.push.upstreams=tcp:127.0.0.1:%d" % (ports["encoder-push"],),
        "--set", ("pop.push.origins=tcp:127.0.0.1:%d" % (ports["origin-push"],)) if push else "pop.push.origins=[]",
        "--set", "pop.pop.player_dir=%s" % (os.path.join(ROOT, "web", "node_modules"),),
        # The URLs the live API gives out, on the ports it really has.
        "--set", "pop.api.rtmp_url=rtmp://127.0.0.1:%d/live" % (ports["rtmp"],),
        "--set", "pop.api.playback_url=http://127.0.0.1:%d" % (ports["pop"],),
    ]
    for role in ("dc-proxy", "encoder", "origin"):
        args += ["--set", "%s.http.listen=tcp:%d:interface=127.0.0.1" % (role, ports[role])]
    args += ["--set", "pop.http.listen=%s" % (json.dumps(
        ["tcp:%d:interface=%s" % (ports["pop"], interface) for interface in pop_interfaces]),)]
    # The working tree's code, whatever copy of it is installed.
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    err = open(stderr, "wb") if stderr else None
    proc = subprocess.Popen(args, cwd=str(tmp_path), env=env, stderr=err)
    # The tests' own deadlines count from a running process, not from the
    # spawn: on a loaded 2-core CI machine starting Python can take seconds.
    serving("http://127.0.0.1:%d/metrics" % (ports["pop"],), 60, proc)
    try:
        yield ports, tmp_path / "twistd.log"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        finally:
            if err is not None:
                err.close()


@pytest.fixture(params=["default", "asyncio"])
def all_role(request, tmp_path):
    with all_role_process(tmp_path, request.param) as running:
        yield running


@pytest_twisted.inlineCallbacks
def test_all_role_runs_the_demo_and_serves_metrics(all_role):
    ports, log = all_role
    live = 'fbstream_rtmp_streams_live{role="encoder"} 1.0'
    yield eventually(lambda: treq.get("http://127.0.0.1:%d/metrics" % (ports["pop"],)).addCallback(
        treq.text_content).addCallback(lambda body: live in body), 20, interval=0.5,
        what=lambda: "the encoder's live stream in /metrics; server log:\n" + log.read_text()[-3000:])
    for role in ("pop", "dc-proxy", "encoder", "origin"):
        response = yield treq.get("http://127.0.0.1:%d/metrics" % (ports[role],))
        assert response.code == 200
        text = yield response.text()
        assert 'fbstream_role_up{role="%s"} 1.0' % (role,) in text
    # A newcomer watches the demo's live DASH at the PoP, through the whole
    # viewers' path: PoP proxy layer -> PoP cache layer -> origin -> encoder.
    pop = "http://127.0.0.1:%d" % (ports["pop"],)
    code = yield wait_for_ok(pop + "/live/demo/manifest.mpd", 30)
    assert code == 200, log.read_text()[-3000:]
    out, err, code = yield run(
        tool("ffmpeg"), "-hide_banner", "-loglevel", "error",
        "-i", pop + "/live/demo/manifest.mpd", "-map", "0:v:0", "-t", "2", "-f", "null", "-",
    )
    assert code == 0, err.decode()[-2000:]
    response = yield treq.get("http://127.0.0.1:%d/metrics" % (ports["origin"],))
    text = yield response.text()
    assert 'fbstream_cache_upstream_fetches_total{tier="origin"}' in text
    # The demo's stream token is in neither the log nor any command line.
    assert "token=" not in log.read_text()
    demo = subprocess.run(["pgrep", "-af", "fbstream.demo"], capture_output=True, text=True).stdout
    assert "fbstream.demo" in demo and "token" not in demo, demo
    # The demo publisher runs under the process monitor: killed, it comes
    # back, and the stream goes on.
    server = subprocess.run(["pgrep", "-f", "pop.rtmp.listen=tcp:%d:" % (ports["rtmp"],)],
                            capture_output=True, text=True).stdout.split()
    assert len(server) == 1, server

    def child():
        pids = subprocess.run(["pgrep", "-P", server[0], "-f", "fbstream.demo"], capture_output=True, text=True)
        return pids.stdout.split()

    first = child()
    assert len(first) == 1, first
    publishes = log.read_text().count("relaying demo to")
    os.kill(int(first[0]), signal.SIGKILL)
    again = yield eventually(lambda: [pid for pid in child() if pid != first[0]], 15, what="the demo publisher back")
    assert len(again) == 1, again
    yield eventually(lambda: log.read_text().count("relaying demo to") > publishes, 20,
                     what=lambda: "the restarted demo to publish; server log:\n" + log.read_text()[-3000:])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--role=edge"], b"unknown role 'edge'"),
        (["--role=pop", "--set", "rtmp.idle_timeout=soon"], b"rtmp.idle_timeout must be float"),
        (["--role=pop", "--config", "/nonexistent.toml"], b"cannot read /nonexistent.toml"),
        (["--role=encoder"], b"there are no token keys"),
        (["--role=dc-proxy", "--set", 'relay.encoders=[]'], b"relay.encoders is empty"),
    ],
)
def test_usage_errors_are_not_tracebacks(argv, message):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FBSTREAM_")}
    env["PYTHONPATH"] = ROOT  # the working tree's code, whatever copy of it is installed
    result = subprocess.run([twistd(), "fbstream", *argv], capture_output=True, timeout=60, env=env, cwd=ROOT)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert b"Traceback" not in result.stderr


def test_twistd_lists_the_plugin():
    result = subprocess.run([twistd(), "--help"], capture_output=True, timeout=60)
    assert b"fbstream" in result.stdout


@pytest_twisted.inlineCallbacks
def test_slowloris_from_one_address_leaves_the_other_viewers_be(tmp_path, request):
    """
    300 connections from 127.0.0.2 send a request head a byte at a time: the
    PoP keeps at most 256 of them (http.max_connections_per_address, set to
    256 here), cuts
    every one off once its head is 10 s late (http.head_timeout) whatever it
    trickles, and a viewer from 127.0.0.1 watches the demo all the while.
    """
    if request.config.getoption("reactor", "default") == "asyncio":
        pytest.skip("runs once, in the default-reactor pass of the suite")
    from twisted.internet import protocol, reactor

    #: Every trickler connected, and those closed.
    made: list[Trickle] = []
    closed: list[Trickle] = []

    class Trickle(protocol.Protocol):
        #: A TCP transport, which the test aborts.
        transport: Any

        def connectionMade(self):
            self.open = True
            self.sent = 0
            made.append(self)
            self.send()

        def send(self):
            if self.open:
                self.transport.write(b"GET / HTTP/1.1\r\nX-a: "[self.sent:self.sent + 1] or b"a")
                self.sent += 1
                self.call = reactor.callLater(1.0, self.send)

        def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
            self.open = False
            closed.append(self)

    # 256 per address here (1024 by default) keeps the test's sockets few.
    extra = ("--demo", "--set", "pop.http.max_connections_per_address=256")
    with all_role_process(tmp_path, extra=extra) as (ports, log):
        pop = "http://127.0.0.1:%d" % (ports["pop"],)
        code = yield wait_for_ok(pop + "/live/demo/manifest.mpd", 40)
        assert code == 200, log.read_text()[-3000:]
        factory: protocol.ClientFactory = protocol.ClientFactory()
        factory.protocol = Trickle
        for _ in range(300):
            reactor.connectTCP("127.0.0.1", ports["pop"], factory, bindAddress=("127.0.0.2", 0))
        yield sleep(3)
        kept = len(made) - len(closed)
        assert kept <= 256, kept
        # The viewer from another address: the manifest and the newest segment, throughout.
        failures = 0
        started = time.monotonic()
        while time.monotonic() - started < 12:
            response = yield treq.get(pop + "/live/demo/manifest.mpd")
            yield response.content()
            failures += response.code != 200
            response = yield treq.get(pop + "/live/index.json")
            yield response.content()
            failures += response.code != 200
            yield sleep(0.5)
        assert failures == 0
        # Every trickler is gone: cut off at its deadline (or refused at once).
        assert len(made) >= 256 and len(closed) == len(made), (len(made), len(closed))
        for trickler in made:
            if trickler.open:
                trickler.call.cancel()
                trickler.transport.abortConnection()
        response = yield treq.get("http://127.0.0.1:%d/metrics" % (ports["pop"],))
        text = yield response.text()
        assert 'fbstream_http_head_timeouts_total{listener="pop-http"}' in text
