"""
Fixtures for the real-socket tests: roles started in this process on the real
reactor, free loopback ports, a generated TLS certificate, and the external
clients (the ffmpeg tool, PyAV in a child process) run without blocking the
reactor.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from typing import cast

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue
from zope.interface import implementer

from fbstream.config import load
from fbstream.media import IConsumerFactory, IStreamConsumer
from fbstream.reactors import IReactorRoles
from fbstream.roles.build import build_role

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: The reactor these tests run on, as the roles take it: tap.makeService
#: casts it so too (Twisted's declared type of the global reactor lacks some
#: of the interfaces it provides).
ROLES_REACTOR = cast(IReactorRoles, reactor)


#: Every port free_port() has handed out in this process.
_handed_out: set[int] = set()


def free_port() -> int:
    """
    A free loopback port, never one handed out before in this process. The
    probe socket is closed before the port is used, so the kernel may offer
    the same port to the next probe: a topology of nine processes once got
    one port for two listeners, and the second one's start failed.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def tool(name: str) -> str:
    """The path of a tool the tests need; CI installs them, so missing is a failure."""
    path = shutil.which(name)
    if path is None:
        pytest.fail("%s is not installed (run .ci/run, or apt-get install ffmpeg)" % (name,))
    return path


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1/localhost, made now."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    d = tmp_path_factory.mktemp("tls")
    key_path = d / "key.pem"
    cert_path = d / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(key_path), str(cert_path)


@implementer(IStreamConsumer)
class StreamTally:
    def __init__(self, stream):
        self.stream = stream
        self.messages = []
        self.done: defer.Deferred[str] = defer.Deferred()

    def media(self, message):
        self.messages.append(message)

    def ended(self, reason):
        self.done.callback(reason)

    def of_type(self, type_id):
        return [m for m in self.messages if m.type_id == type_id]


@implementer(IConsumerFactory)
class Tallies:
    def __init__(self):
        self.by_name = {}
        self.started = {}

    def consumer_for(self, stream):
        tally = self.by_name[stream.name] = StreamTally(stream)
        waiter = self.started.pop(stream.name, None)
        if waiter is not None:
            waiter.callback(tally)
        return tally

    def wait_for(self, name):
        if name in self.by_name:
            return defer.succeed(self.by_name[name])
        d = self.started[name] = defer.Deferred()
        return d


class RunningRole:
    def __init__(self, service, rtmp_port, rtmps_port, http_port, tallies, record_dir):
        self.service = service
        self.hub = service.hub
        self.rtmp_port = rtmp_port
        self.rtmps_port = rtmps_port
        self.http_port = http_port
        self.tallies = tallies
        self.record_dir = record_dir
        self.base = "http://127.0.0.1:%d" % (http_port,)

    def url(self, name, tls=False):
        if tls:
            return "rtmps://127.0.0.1:%d/live/%s" % (self.rtmps_port, name)
        return "rtmp://127.0.0.1:%d/live/%s" % (self.rtmp_port, name)


def start_role(role, overrides, rtmp, rtmps, http, directory):
    """Build and start ``role`` from its conf file with ``overrides``, with a Tallies consumer."""
    # The RTMP engine's tests publish without tokens, into the PoP's own hub.
    # The PoP serves its viewers from this process (conf/pop.toml: a worker per core).
    base = ["tokens.required=false"] + (["relay.dc_proxies=[]", "pop.workers=1"] if role == "pop" else [])
    cfg = load(role, os.path.join(ROOT, "conf", role + ".toml"), base + list(overrides))[role]
    service = build_role(cfg, ROLES_REACTOR)
    tallies = Tallies()
    assert service.hub is not None, "%s has no hub" % (role,)
    service.hub.consumer_factories.append(tallies)
    service.startService()
    return RunningRole(service, rtmp, rtmps, http, tallies, str(directory))


@pytest.fixture
def pop(tmp_path, tls_files):
    """A pop role on free ports (RTMP, RTMPS, HTTP), recording to tmp_path."""
    key, cert = tls_files
    rtmp, rtmps, http = free_port(), free_port(), free_port()
    record = tmp_path / "recordings"
    running = start_role("pop", [
        'rtmp.listen=["tcp:%d:interface=127.0.0.1", "ssl:%d:interface=127.0.0.1:privateKey=%s:certKey=%s"]'
        % (rtmp, rtmps, key, cert),
        "http.listen=tcp:%d:interface=127.0.0.1" % (http,),
        "record.dir=%s" % (record,),
    ], rtmp, rtmps, http, record)
    yield running
    pytest_twisted.blockon(defer.maybeDeferred(running.service.stopService))


def start_encoder(archive, *overrides):
    """An encoder role on free ports (RTMP, HTTP), archiving to ``archive``, with ``overrides``."""
    rtmp, http = free_port(), free_port()
    return start_role("encoder", [
        # A publish that ends is the replay at once (no wait for a reconnect).
        "ingest.grace_seconds=0",
        "rtmp.listen=tcp:%d:interface=127.0.0.1" % (rtmp,),
        "http.listen=tcp:%d:interface=127.0.0.1" % (http,),
        "archive.dir=%s" % (archive,),
        *overrides,
    ], rtmp, None, http, archive)


@pytest.fixture
def encoder(tmp_path):
    role = start_encoder(tmp_path / "archive")
    yield role
    pytest_twisted.blockon(defer.maybeDeferred(role.service.stopService))


@pytest.fixture(scope="session")
def source_flv(tmp_path_factory):
    """Ten seconds of 640x360 H.264 (2 s GOP) and AAC, made by the ffmpeg tool."""
    path = str(tmp_path_factory.mktemp("src") / "source.flv")
    subprocess.run(
        [tool("ffmpeg"), "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
         "-t", "10", "-c:v", "libx264", "-preset", "veryfast", "-g", "60",
         "-c:a", "aac", "-b:a", "128k", "-f", "flv", path],
        check=True,
    )
    return path


def run(executable, *args, env=None, timeout=120, kill=False):
    """
    Run a process without blocking the reactor; fires (out, err, code). A
    process still running after ``timeout`` seconds is killed (code 124), so a
    client stuck in a loop fails its test instead of hanging the suite. With
    ``kill`` it gets SIGKILL rather than SIGTERM: a broadcaster that drops
    without a word, as when its network goes.
    """
    stop = ["-s", "KILL"] if kill else ["-k", "5"]
    d = getProcessOutputAndValue(
        shutil.which("timeout"),
        stop + [str(timeout), executable] + [str(a) for a in args],
        env=env if env is not None else dict(os.environ),
    )
    # Ended by a signal: the same three things, with the signal as -code.
    d.addErrback(lambda f: (f.value[0], f.value[1], -f.value[2]) if isinstance(f.value, tuple) else f)
    return d


def pyav_publish(url, *extra):
    """Publish with PyAV (libavformat's RTMP client) in a child process."""
    return run(sys.executable, "-m", "fbstream.demo", "--url", url, *extra)


def pyav_counts(result):
    out, err, code = result
    assert code == 0, err.decode("utf-8", "replace")[-2000:]
    return json.loads(out.decode().strip().splitlines()[-1])


def probe_packets(path):
    """(codec_type, dts ms, is keyframe) of every packet, by ffprobe."""
    out = subprocess.run(
        [tool("ffprobe"), "-v", "error", "-show_entries", "packet=codec_type,dts,flags",
         "-of", "csv=p=0", path],
        check=True, capture_output=True, text=True,
    ).stdout
    packets = []
    for line in out.splitlines():
        kind, dts, flags = line.split(",")[:3]
        packets.append((kind, int(dts), "K" in flags))
    return packets


@defer.inlineCallbacks
def ffmpeg_play(url, path, seconds=3):
    """
    Play ``url`` with the ffmpeg tool for ``seconds`` into ``path``, check the
    recording decodes without an error, and return its packets (as
    :func:`probe_packets`).
    """
    out, err, code = yield run(
        tool("ffmpeg"), "-hide_banner", "-loglevel", "error", "-y", "-i", url,
        "-t", str(seconds), "-c", "copy", path,
    )
    assert code == 0, err.decode()[-2000:]
    out, err, code = yield run(tool("ffmpeg"), "-v", "error", "-i", path, "-f", "null", "-")
    assert code == 0 and not err.strip(), err.decode()[-2000:]
    return probe_packets(path)


def sleep(seconds):
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


@defer.inlineCallbacks
def eventually(probe, timeout=30, what="condition", interval=0.25):
    """
    The one way the integration tests wait: call ``probe`` (which may return
    a Deferred) every ``interval`` seconds until it returns something true,
    and return that. An exception counts as not yet (a server that is not up
    refuses connections). Past ``timeout`` seconds, fail naming ``what`` (a
    string, or a callable for a message made then) and the last answer.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            last = yield defer.maybeDeferred(probe)
        except Exception as e:
            last = e
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            what = what() if callable(what) else what
            raise AssertionError("timed out after %g s waiting for %s (last: %r)" % (timeout, what, last))
        yield sleep(interval)


def serving(url, timeout, process=None, ready=lambda body: True):
    """
    The way a synchronous fixture waits for a process it started: until
    ``url`` answers with a body ``ready`` accepts, and return True; False if
    ``process`` exits or ``timeout`` seconds pass first. (Tests running on
    the reactor wait with :func:`eventually`.)
    """
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (process is None or process.poll() is None):
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if ready(response.read()):
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


class Etcd:
    """A real etcd server (Debian's etcd-server) on free loopback ports."""

    def __init__(self, directory):
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % (self.port,)
        self.directory = str(directory)
        self.process = None

    def start(self):
        peer = free_port()
        self.process = subprocess.Popen(
            [tool("etcd"), "--data-dir", os.path.join(self.directory, "data"),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", "http://127.0.0.1:%d" % (peer,),
             "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % (peer,),
             "--initial-cluster", "default=http://127.0.0.1:%d" % (peer,)],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.directory, "etcd.log"), "ab"),
        )
        if serving(self.url + "/health", 20, self.process, lambda body: b"true" in body):
            return self
        self.stop()
        pytest.fail("etcd did not start; see %s/etcd.log" % (self.directory,))

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="session")
def etcd(tmp_path_factory):
    server = Etcd(tmp_path_factory.mktemp("etcd")).start()
    yield server
    server.stop()
