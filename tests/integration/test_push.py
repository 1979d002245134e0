"""
The push channel for real: ``twistd fbstream --role=all`` with the demo, its
encoder pushing to its origin and its origin to the PoP's cache layer over
HTTP/2 on loopback sockets; h2 with prior knowledge and a shared secret, and
TLS with ALPN h2 and client certificates. ``nghttp`` (nghttp2's client, which
nobody here wrote) subscribes to the origin beside the PoP and is pushed
the manifests as the PoP is. A viewer (the ffmpeg tool's HLS reader) plays from the PoP,
and LL-HLS blocking reloads for the next part are answered there, while the
PoP's cache layer asks the origin for nothing of that stream.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from .conftest import tool
from .test_twistd import all_role_process

SECRET = "push-secret-for-the-tests-0123456789"


def metrics(port: int) -> str:
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % (port,), timeout=10) as response:
        return response.read().decode()


def value(text: str, name: str, tier: str) -> float:
    match = re.search(r'^%s\{tier="%s"\} ([0-9.e+-]+)$' % (re.escape(name), re.escape(tier)), text, re.M)
    return float(match.group(1)) if match else 0.0


def ok_within(url: str, seconds: float) -> int | None:
    """Ask ``url`` until it answers 200 (or ``seconds`` pass); the last status (None: never answered)."""
    deadline, code = time.monotonic() + seconds, None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                response.read()
                return response.status
        except urllib.error.HTTPError as e:
            code = e.code
        except OSError:
            pass
        time.sleep(0.5)
    return code


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def next_part_reloads(pop: str, count: int) -> list[tuple[str, bytes]]:
    """
    ``count`` LL-HLS blocking reloads at the PoP, each for the part its
    playlist hints at next (not cut yet when asked): each reload and what
    it was answered.
    """
    master = get(pop + "/live/demo/master.m3u8").decode()
    media = pop + "/live/demo/" + next(line for line in master.splitlines() if line.endswith("playlist.m3u8"))
    answers = []
    for _ in range(count):
        hint = re.search(rb'PRELOAD-HINT:TYPE=PART,URI="(\d+)\.(\d+)\.m4s"', get(media))
        assert hint is not None, "no preload hint: the stream is over?"
        query = "?_HLS_msn=%d&_HLS_part=%d" % (int(hint.group(1)), int(hint.group(2)))
        answers.append((query, get(media + query)))
    return answers


def nghttp(url: str, *args: str, seconds: float = 4.0, secret: str = SECRET) -> str:
    """
    nghttp's verbose account of one subscription (windows opened for
    segments), stopped after ``seconds`` with SIGTERM: the response never
    ends. (Not ^C: a shell without job control, as CI's is, starts its
    background jobs with SIGINT ignored, and nghttp inherits that.)
    """
    # Line-buffered: what it printed survives the SIGTERM.
    process = subprocess.Popen(
        [tool("stdbuf"), "-oL", tool("nghttp"), "-v", "-n", "-w", "23", "-W", "23",
         "-H", "authorization: Bearer %s" % (secret,), *args, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    return out.decode(errors="replace") + err.decode(errors="replace")


def promised_paths(verbose: str) -> list[str]:
    """The ``:path`` of every PUSH_PROMISE nghttp received (it prints a frame's headers before the frame)."""
    paths, path = [], None
    for line in verbose.splitlines():
        match = re.search(r"recv \(stream_id=\d+\) :path: (\S+)", line)
        if match:
            path = match.group(1)
        elif "recv PUSH_PROMISE frame" in line and path is not None:
            paths.append(path)
            path = None
    return paths


def test_pushes_reach_the_pop_and_its_cache_layer_fetches_nothing_while_a_viewer_plays(tmp_path):
    env = dict(os.environ, FBSTREAM_PUSH_SECRET=SECRET)
    with all_role_process(tmp_path, env=env) as (ports, log):
        pop = "http://127.0.0.1:%d" % (ports["pop"],)
        assert ok_within(pop + "/live/demo/manifest.mpd", 40) == 200, log.read_text()[-3000:]
        viewer = subprocess.Popen(
            # ffmpeg's HLS reader plays live in real time (its DASH reader
            # of this ffmpeg loops over one segment of a live MPD).
            [tool("ffmpeg"), "-v", "error", "-i", pop + "/live/demo/master.m3u8", "-map", "0:v:0", "-t", "25",
             "-c", "copy", "-f", "null", "-"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            time.sleep(6)  # the viewer reaches the live edge; every object from here on is pushed
            before = metrics(ports["pop"])
            started = time.monotonic()
            reloads = next_part_reloads(pop, 8)
            time.sleep(max(0.0, 10 - (time.monotonic() - started)))
            after = metrics(ports["pop"])
        finally:
            viewer.kill()
            viewer.wait()
        why = "server log:\n" + log.read_text()[-4000:]
        # The viewer played: the cache layer was asked, and answered from pushes.
        assert value(after, "fbstream_cache_requests_total", "pop-cache") > \
            value(before, "fbstream_cache_requests_total", "pop-cache") + 10, why
        assert value(after, "fbstream_push_received_total", "pop-cache") > \
            value(before, "fbstream_push_received_total", "pop-cache") + 100, why
        assert value(after, "fbstream_cache_upstream_fetches_total", "pop-cache") == \
            value(before, "fbstream_cache_upstream_fetches_total", "pop-cache"), why
        # Each blocking reload for the next part was answered with a playlist
        # that has it: from the pushed versions, since nothing was fetched.
        for query, playlist in reloads:
            msn, part = re.findall(r"=(\d+)", query)
            assert b'URI="%s.%s.m4s"' % (msn.encode(), part.encode()) in playlist or \
                b"\n%s.m4s" % (msn.encode(),) in playlist, (query, playlist[-600:], why)
        # One subscriber (the PoP's cache layer) at each hop, each subscribed to the demo.
        for tier in ("encoder", "origin"):
            assert value(after, "fbstream_push_subscribers", tier) == 1.0, why
            assert value(after, "fbstream_push_subscriptions", tier) == 1.0, why
        assert value(after, "fbstream_push_lag_seconds_count", "pop-cache") > 0, why


def test_nghttp_is_pushed_the_manifests_over_h2_with_prior_knowledge_and_needs_the_secret(tmp_path):
    env = dict(os.environ, FBSTREAM_PUSH_SECRET=SECRET)
    with all_role_process(tmp_path, env=env) as (ports, log):
        pop = "http://127.0.0.1:%d" % (ports["pop"],)
        assert ok_within(pop + "/live/demo/manifest.mpd", 40) == 200, log.read_text()[-3000:]
        url = "http://127.0.0.1:%d/push/v1/live/demo" % (ports["origin-push"],)
        seen = nghttp(url, seconds=6)
        paths = promised_paths(seen)
        why = seen[-3000:] + "\nserver log:\n" + log.read_text()[-3000:]
        assert "/live/demo/manifest.mpd" in paths, why
        assert any(p.endswith("/playlist.m3u8") for p in paths), why
        assert any(re.match(r"^/live/demo/\w+/\d+\.m4s$", p) for p in paths), why  # whole segments
        assert any(re.match(r"^/live/demo/\w+/\d+\.\d+\.m4s$", p) for p in paths), why  # LL-HLS parts
        # The wrong secret: a 401, and no push.
        refused = nghttp(url, seconds=3, secret="wrong-secret-0123456789")
        assert ":status: 401" in refused and "PUSH_PROMISE" not in refused, refused[-2000:]


@pytest.fixture
def mutual_tls(tls_files):
    """Every tier's push channel on TLS (ALPN h2) with client certificates, from one self-signed CA."""
    key, cert = tls_files
    settings = []
    for role in ("encoder", "origin", "pop"):
        for name, path in (("tls_cert", cert), ("tls_key", key), ("tls_ca", cert)):
            settings += ["--set", "%s.push.%s=%s" % (role, name, path)]
    return key, cert, settings


def test_over_mutual_tls_the_pop_and_nghttp_are_pushed_to_and_a_stranger_is_not(tmp_path, mutual_tls):
    key, cert, settings = mutual_tls
    env = dict(os.environ, FBSTREAM_PUSH_SECRET=SECRET)
    with all_role_process(tmp_path, env=env, extra=("--demo", *settings)) as (ports, log):
        pop = "http://127.0.0.1:%d" % (ports["pop"],)
        assert ok_within(pop + "/live/demo/manifest.mpd", 40) == 200, log.read_text()[-3000:]
        url = "https://127.0.0.1:%d/push/v1/live/demo" % (ports["origin-push"],)
        seen = nghttp(url, "--cert", cert, "--key", key)
        why = seen[-3000:] + "\nserver log:\n" + log.read_text()[-3000:]
        assert "The negotiated protocol: h2" in seen, why
        assert "/live/demo/manifest.mpd" in promised_paths(seen), why
        # The PoP subscribed over TLS too, and is pushed to.
        deadline = time.monotonic() + 20
        while value(metrics(ports["pop"]), "fbstream_push_received_total", "pop-cache") < 20:
            assert time.monotonic() < deadline, "the PoP was pushed nothing over TLS\n" + why
            time.sleep(0.5)
        # Without a client certificate the handshake fails: nothing is pushed.
        stranger = nghttp(url, seconds=3)
        assert "PUSH_PROMISE" not in stranger and ":status: 200" not in stranger, stranger[-2000:]
