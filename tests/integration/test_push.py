"""
The push channel for real: ``twistd fbstream --role=all`` with the demo, its
encoder pushing to its origin and its origin to the PoP's cache layer over
HTTP/2 on loopback sockets; h2 with prior knowledge and a shared secret, and
TLS with ALPN h2 and client certificates. ``nghttp`` (nghttp2's client, which
nobody here wrote) subscribes to the origin beside the PoP and is pushed
the manifests as the PoP is. A viewer (the ffmpeg tool's HLS reader) plays from the PoP,
and LL-HLS blocking reloads for the next part are answered there, while the
PoP's cache layer asks the origin for nothing of that stream. A
subscriber written on h2 that stops reading its socket delays no push to
another. A viewer reading a segment pushed to the PoP reads it whole when
the PoP's push connection is cut under it.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import socket
import struct
import subprocess
import termios
import threading
import time
import urllib.error
import urllib.request

import h2.config
import h2.connection
import h2.events
import h2.settings
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
    """
    The ``:path`` of every PUSH_PROMISE nghttp received (it prints a frame's
    headers before the frame, a never-indexed one marked "sensitive").
    """
    paths, path = [], None
    for line in verbose.splitlines():
        match = re.search(r"recv \(stream_id=\d+(?:, sensitive)?\) :path: (\S+)", line)
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


class RawSubscriber:
    """
    A subscriber to the origin's push channel written on python-hyper's h2
    and a plain blocking socket: it records every pushed response it reads
    (its path, ``x-fbstream-made``, its body, and when it ended), and it can
    stop reading at any moment, leaving the socket open, as a wedged PoP does.
    """

    def __init__(self, port: int, stream: str, *, window: int = 8 * 1024 * 1024, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the TCP window
        self.sock.connect(("127.0.0.1", port))
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.h2.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 1,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window,
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 256,
        })
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(window)
        self.h2.send_headers(1, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"origin"),
                                 (b":path", b"/push/v1/live/" + stream.encode()),
                                 (b"authorization", b"Bearer " + SECRET.encode())], end_stream=True)
        self.sock.sendall(self.h2.data_to_send())
        self.status: bytes | None = None
        #: Promised stream id -> [path, made, body].
        self.open: dict[int, list] = {}
        #: (path, made, body, monotonic time it ended) of every whole pushed response, in order.
        self.done: list[tuple[str, float, bytes, float]] = []
        self.closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read_once(self, timeout: float = 1.0) -> None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return
        now = time.monotonic()
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.PushedStreamReceived):
                path = dict(event.headers or []).get(b":path", b"").decode()
                self.open[event.pushed_stream_id or 0] = [path, 0.0, []]
            elif isinstance(event, h2.events.ResponseReceived):
                if event.stream_id == 1:
                    self.status = dict(event.headers).get(b":status")
                elif event.stream_id in self.open:
                    made = dict(event.headers).get(b"x-fbstream-made", b"0")
                    self.open[event.stream_id][1] = float(made)
            elif isinstance(event, h2.events.DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if event.stream_id in self.open:
                    self.open[event.stream_id][2].append(event.data)
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id in self.open:
                path, made, body = self.open.pop(event.stream_id)
                self.done.append((path, made, b"".join(body), now))
            elif isinstance(event, h2.events.StreamReset):
                self.open.pop(event.stream_id, None)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.closed = True
        self.sock.sendall(self.h2.data_to_send())  # window updates, ping answers

    def read_until(self, done, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not done() and not self.closed and time.monotonic() < deadline:
            self.read_once()

    def keep_reading(self) -> None:
        """Read in a thread until :meth:`close`."""
        def loop() -> None:
            while not self._stop.is_set() and not self.closed:
                self.read_once(0.2)
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def unread(self) -> int:
        """Bytes the kernel holds for this socket that it has not read."""
        return struct.unpack("i", fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.sock.close()


def part_hint(playlist: bytes) -> tuple[int, int]:
    """(segment, part) of the next part an LL-HLS media playlist announces (its preload hint)."""
    match = re.search(rb'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="(\d+)\.(\d+)\.m4s"', playlist)
    assert match is not None, playlist.decode(errors="replace")
    return int(match.group(1)), int(match.group(2))


def test_a_subscriber_that_stops_reading_delays_no_push_to_another(tmp_path):
    """
    Two subscribers at the origin beside the PoP: one stops reading its
    socket altogether (its TCP window closes, the origin's socket buffer and
    then its transport's fill), the other reads on. The origin gives the
    stalled one up (its PINGs go unanswered) and lets its connection go,
    buffers and all, and all the while the reader is pushed every new
    version of a playlist as promptly as the encoder makes them.
    """
    env = dict(os.environ, FBSTREAM_PUSH_SECRET=SECRET)
    with all_role_process(tmp_path, env=env) as (ports, log):
        pop = "http://127.0.0.1:%d" % (ports["pop"],)
        assert ok_within(pop + "/live/demo/manifest.mpd", 40) == 200, log.read_text()[-3000:]

        def origin(name: str) -> float:
            ok_within(pop + "/live/demo/manifest.mpd", 5)  # a viewer at the PoP: it stays subscribed
            return value(metrics(ports["origin"]), name, "origin")

        before, dropped = origin("fbstream_push_subscribers"), origin("fbstream_push_dropped_total")
        stalled = RawSubscriber(ports["origin-push"], "demo", rcvbuf=4096)
        reader = RawSubscriber(ports["origin-push"], "demo")
        try:
            stalled.read_until(lambda: stalled.status is not None and len(stalled.done) > 0, 20)
            reader.read_until(lambda: reader.status is not None, 20)
            assert stalled.status == reader.status == b"200", log.read_text()[-3000:]
            # From here on the stalled one reads nothing at all.
            reader.keep_reading()
            started = time.monotonic()
            subscriptions = origin("fbstream_push_subscriptions")
            unread = 0
            # The origin gives it up: its subscription first (the PINGs it
            # does not answer), then its connection.
            while origin("fbstream_push_subscriptions") >= subscriptions:
                unread = max(unread, stalled.unread())
                assert time.monotonic() - started < 30, "the origin never gave the stalled subscriber up\n" + \
                    log.read_text()[-3000:]
                time.sleep(0.5)
            given_up = time.monotonic() - started
            while origin("fbstream_push_subscribers") > before + 1:
                assert time.monotonic() - started < 40, (
                    "the origin holds the stalled subscriber's connection %.1f s after giving it up\n"
                    % (time.monotonic() - started - given_up,)) + log.read_text()[-3000:]
                time.sleep(0.5)
            closed = time.monotonic() - started
            time.sleep(10)  # and the reader is pushed to for a while longer
            dropped = origin("fbstream_push_dropped_total") - dropped
        finally:
            reader.close()
            stalled.close()
        why = "server log:\n" + log.read_text()[-4000:]
        assert unread > 0, "the stalled subscriber's socket held nothing unread\n" + why
        # One rendition's playlist, as the reader was pushed its versions.
        playlists = [(path, made, body, at) for path, made, body, at in reader.done if path.endswith("/playlist.m3u8")]
        assert playlists, why
        path = playlists[0][0]
        versions = [(made, body, at) for p, made, body, at in playlists if p == path and at >= started]
        # None missing: each version announces the part after the one
        # before's (or the same, when a segment ends), the next segment's
        # first after a segment's last.
        hints = [part_hint(body) for _, body, _ in versions]
        missing = [(a, b) for a, b in zip(hints, hints[1:]) if b not in (a, (a[0], a[1] + 1), (a[0] + 1, 0))]
        # Promptly: each version reached the reader soon after the encoder
        # made it (x-fbstream-made is the encoder's clock, this host's), and
        # they came at the encoder's own pace.
        wall = time.time() - time.monotonic()
        lags = sorted(at + wall - made for made, _, at in versions)
        made_gaps = sorted(b[0] - a[0] for a, b in zip(versions, versions[1:]))
        arrival_gaps = sorted(b[2] - a[2] for a, b in zip(versions, versions[1:]))
        figures = (
            "%s: %d versions over %.1f s (the stalled subscriber given up after %.1f s, its connection gone after "
            "%.1f s, %d bytes unread in its socket); lag p50 %.3f s, max %.3f s; gap between versions p50 %.3f s "
            "at the encoder, %.3f s at the reader, longest %.3f s and %.3f s; skipped: %s; pushes dropped at the "
            "origin: %d"
            % (path, len(versions), time.monotonic() - started, given_up, closed, unread,
               lags[len(lags) // 2], lags[-1], made_gaps[len(made_gaps) // 2],
               arrival_gaps[len(arrival_gaps) // 2], made_gaps[-1], arrival_gaps[-1], missing[:5], dropped))
        assert len(versions) > 2 * (closed + 10), figures + "\n" + why  # four parts a second are made
        assert not missing, figures + "\n" + why
        assert lags[-1] < 1.0, figures + "\n" + why
        assert arrival_gaps[-1] < made_gaps[-1] + 0.5, figures + "\n" + why


def test_a_segment_read_at_the_pop_when_its_push_is_cut_goes_on_from_a_fetch(tmp_path):
    """
    A viewer reads, at the PoP, the segment the encoder is making, pushed
    there; the PoP's push connection is cut under it (``ss -K``, as a link
    that died). The PoP fetches the segment from the origin instead and the
    viewer's response goes on from the byte it had reached: whole, and the
    encoder's bytes, as if it had never been pushed.
    """
    env = dict(os.environ, FBSTREAM_PUSH_SECRET=SECRET)
    with all_role_process(tmp_path, env=env) as (ports, log):
        pop = "http://127.0.0.1:%d" % (ports["pop"],)
        assert ok_within(pop + "/live/demo/manifest.mpd", 40) == 200, log.read_text()[-3000:]
        deadline = time.monotonic() + 30
        while value(metrics(ports["pop"]), "fbstream_push_received_total", "pop-cache") < 20:
            assert time.monotonic() < deadline, "no pushes reached the PoP\n" + log.read_text()[-3000:]
            time.sleep(0.5)
        for _ in range(3):  # the cut must come while the segment still grows: once in a while it is too late
            with urllib.request.urlopen(pop + "/live/demo/720p/playlist.m3u8", timeout=10) as response:
                number = part_hint(response.read())[0]
            path = "/live/demo/720p/%d.m4s" % (number,)
            read: list[bytes | Exception] = []

            def viewer(path: str = path, read: list = read) -> None:
                try:
                    with urllib.request.urlopen(pop + path, timeout=20) as response:
                        read.append(response.read())
                except Exception as e:  # an aborted body: IncompleteRead, a reset
                    read.append(e)

            thread = threading.Thread(target=viewer, daemon=True)
            thread.start()
            time.sleep(0.4)  # its push has begun, and the viewer has its first chunks
            cut = subprocess.run([tool("ss"), "-K", "dst", "127.0.0.1", "dport", "=", ":%d" % (ports["origin-push"],)],
                                 capture_output=True, text=True)
            assert cut.returncode == 0, cut.stderr
            thread.join(20)
            if "the push of %s was reset" % (path,) in log.read_text():
                break
        why = "server log:\n" + log.read_text()[-4000:]
        assert "pop-cache: the push of %s was reset" % (path,) in log.read_text(), why
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (ports["encoder"], path), timeout=10) as response:
            made = response.read()
        assert read and isinstance(read[0], bytes), "%r\n%s" % (read, why)
        assert len(made) > 10_000 and read[0] == made, "the viewer read %d bytes of the encoder's %d\n%s" % (
            len(read[0]), len(made), why)
        assert "%s failed" % (path,) not in log.read_text(), why
