"""
``fbstream-broadcast`` behind a real bandwidth limit: the broadcaster runs in
a network namespace whose end of a veth pair sends through a ``tbf`` token
bucket (:mod:`.netlimit`, ``upload=True``); the ``all`` role, on this side,
takes its RTMP. The link carries 4 Mbit/s, then 1 Mbit/s, then 4 Mbit/s,
changed while it broadcasts at up to 2.5 Mbit/s of video. Its bitrate must
come under each limit soon after the link narrows, stay there (but for its
gentle probing), climb back to the top once the link widens, on one
connection throughout; the encoder must make every segment; and two
simulated viewers must play on, without an error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
import pytest_twisted

from fbstream.rtmp.messages import AUDIO, VIDEO

from . import netlimit
from .conftest import run
from .test_push import ok_within
from .test_twistd import all_role_process

#: (kbit/s, seconds): the first from the broadcaster's first second live.
PHASES = ((4000, 20), (1000, 30), (4000, 40))
MAXIMUM, AUDIO_KBPS = 2500, 64
#: How soon the bitrate must fit the narrow link, and how soon it must be
#: back at 90 % of the top on the wide one: it climbs slowly on purpose,
#: gently past where the link last gave out (rate.NEAR_CEILING), then by
#: 15 % steps (OBS's constants take 24 s for the same climb).
DOWN_WITHIN = 6.0
UP_WITHIN = 30.0
#: Once settled under the narrow link the bitrate stays there, but for its
#: probing: a few of its smallest steps (50 kbit/s) past the link, for a
#: few seconds at a time, with the queue's delay short of the 2 s at which
#: it would drop video (rate.QUEUE_DROP).
PROBE_KBPS = 150
LONGEST_QUEUE = 2.0


def _lines(stream, into):
    for line in stream:
        try:
            into.append((time.time(), json.loads(line)))
        except ValueError:
            pass


def test_the_upload_fits_a_real_limit_and_the_viewers_play_on(tmp_path, request):
    if request.config.getoption("reactor", "default") == "asyncio":
        pytest.skip("runs once, in the default-reactor pass: it measures the link, not the reactor")
    netlimit.require()
    key = os.urandom(12).hex()
    env = dict(os.environ, FBSTREAM_API_KEY=key)
    seconds = sum(length for _, length in PHASES)
    lines: list = []
    with netlimit.LimitedLink(PHASES[0][0], upload=True) as link, \
            all_role_process(tmp_path, extra=(), env=env, rtmp_interfaces=("127.0.0.1", link.host)) as (ports, log):
        pop = "http://127.0.0.1:%d" % (ports["pop"],)
        created = urllib.request.urlopen(urllib.request.Request(
            pop + "/api/v1/live_videos", data=b'{"title": "behind a limit"}',
            headers={"authorization": "Bearer " + key}), timeout=30)
        video = json.loads(created.read())
        ingest = video["ingest"]["rtmp"].replace("127.0.0.1", link.host, 1)
        broadcaster = subprocess.Popen(
            [*link.exec_args(), sys.executable, "-m", "fbstream.broadcast", "--url", ingest, "--json",
             "--size", "640x360", "--bitrate", str(MAXIMUM), "--audio-bitrate", str(AUDIO_KBPS),
             "--duration", str(seconds + 5)],
            stdout=subprocess.PIPE, stderr=open(tmp_path / "broadcast.log", "wb"), text=True, env=env)
        reader = threading.Thread(target=_lines, args=(broadcaster.stdout, lines), daemon=True)
        reader.start()
        viewer = None
        try:
            deadline = time.time() + 30
            while not any(line["state"] == "live" for _, line in lines) and time.time() < deadline:
                time.sleep(0.2)
            assert lines and lines[-1][1]["state"] == "live", (tmp_path / "broadcast.log").read_text()[-3000:]
            began = time.time()
            manifest = pop + "/live/%s/manifest.mpd" % (video["id"],)
            assert ok_within(manifest, 20) == 200, log.read_text()[-3000:]
            viewer = subprocess.Popen(
                [sys.executable, "-m", "fbstream.load", pop, "--streams", video["id"], "--viewers", "2",
                 "--seconds", str(int(seconds - (time.time() - began)) - 2), "--json", str(tmp_path / "viewers.json")],
                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "viewers.log", "wb"), env=env)
            at = began
            for i, (rate, length) in enumerate(PHASES):
                if i:
                    link.limit(rate)
                at += length
                time.sleep(max(0.0, at - time.time()))
            qdisc = link.qdisc()
            changed = [t for t, _ in link.history[1:]]
            assert viewer.wait(60) == 0, (tmp_path / "viewers.log").read_text()[-3000:]
            with urllib.request.urlopen(manifest, timeout=10) as response:
                mpd = response.read().decode()
            numbers = _available(mpd)
            missing = [(rendition, n) for rendition in ("240p", "audio") for n in numbers
                       if ok_within(pop + "/live/%s/%s/%d.m4s" % (video["id"], rendition, n), 1) != 200]
        finally:
            broadcaster.terminate()
            broadcaster.wait(30)
            if viewer is not None and viewer.poll() is None:
                viewer.kill()
        reader.join(10)
    seen = json.loads((tmp_path / "viewers.json").read_text())["summary"]
    narrowed, widened = changed
    narrow = [(t - narrowed, line) for t, line in lines if narrowed <= t < widened]
    wide = [(t - widened, line) for t, line in lines if t >= widened]
    fits = next((t for t, line in narrow if line["video_kbps"] + AUDIO_KBPS <= PHASES[1][0]), None)
    settled = [line for t, line in narrow if fits is not None and t >= fits]
    over = [line["video_kbps"] for line in settled if line["video_kbps"] + AUDIO_KBPS > PHASES[1][0] + PROBE_KBPS]
    # What the broadcaster sent, not the bitrate it asked of the encoder:
    # its probing takes that past the link for a few seconds at a time (held
    # under it by ``over``), and x264 does not always fill what it is asked.
    totals = sorted(line["sending_kbps"] for line in settled)
    used = [line["video_kbps"] + AUDIO_KBPS for t, line in narrow if t >= PHASES[1][1] - 10]
    top = next((t for t, line in wide if line["video_kbps"] >= 0.9 * MAXIMUM), None)
    last = lines[-1][1] if lines else {}
    print("broadcast: fits 1 Mbit/s after %s s (video %s kbit/s), then sent a median %s kbit/s, %d s over it by more "
          "than %d, the last 10 s at %s kbit/s (queue up to %.2f s); back to the top after %s s; connections %s, "
          "video tags dropped %s; viewers: %s | %d segments of each, %d missing | %s" % (
              fits, [line["video_kbps"] for _, line in narrow[:8]], totals[len(totals) // 2] if totals else None,
              len(over), PROBE_KBPS, round(sum(used) / len(used)) if used else None,
              max((line["queue_s"] for line in settled), default=0), top, last.get("connections"),
              last.get("dropped_tags"), json.dumps({k: seen.get(k) for k in (
                  "errors", "stalls", "stalled_seconds", "rebuffer_ratio", "renditions", "latency_p50")}),
              len(numbers), len(missing), qdisc))
    assert fits is not None and fits <= DOWN_WITHIN, narrow[:12]
    assert totals and totals[len(totals) // 2] <= PHASES[1][0] and not over, settled
    assert used and sum(used) / len(used) >= 0.5 * PHASES[1][0], "it settled far under the link: %s" % (used,)
    assert max(line["queue_s"] for line in settled) < LONGEST_QUEUE, settled
    assert top is not None and top <= UP_WITHIN, wide[:30]
    assert last.get("connections") == 1, "the limit cost the broadcaster its connection"
    assert not missing and len(numbers) >= seconds - 10, missing
    assert seen["errors"] == {} and seen["started"] == 2, seen
    assert seen["rebuffer_ratio"] < 0.02, seen


def _available(mpd: str) -> list[int]:
    """The segment numbers the MPD's live edge has made, from the first (a $Number$ template from 1)."""
    import calendar
    import re

    start = re.search(r'availabilityStartTime="([^".]+)(?:\.\d+)?Z"', mpd)
    assert start, mpd[:500]
    origin = calendar.timegm(time.strptime(start.group(1), "%Y-%m-%dT%H:%M:%S"))
    return list(range(1, int(time.time() - origin) - 3))


class Cutter:
    """A TCP forwarder on loopback (a thread a connection) whose connections the test can cut, as a network would."""

    def __init__(self, port: int) -> None:
        import socket

        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pairs: list = []
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            self.pairs.append((client, server))
            self.accepted += 1
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source, sink) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.close()
            except OSError:
                pass

    def cut(self) -> None:
        import socket

        for pair in self.pairs:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.pairs.clear()

    def close(self) -> None:
        self.cut()
        self.listener.close()


def test_a_broadcast_from_a_file_sees_a_comment_within_2s_and_survives_a_cut_connection(tmp_path, request):
    """
    From a looped file, through a connection the test cuts halfway: the
    broadcaster connects again with the same key, the viewers (two
    simulated, at the PoP) play on, stalling no longer than it was away, and
    every segment is made; a comment posted
    at the PoP reaches the broadcaster (reading at another PoP) within 2 s,
    shown as text. Then a second broadcaster goes live through the live API.
    """
    from .conftest import tool
    from .topology import Node, origin_pop_args

    if request.config.getoption("reactor", "default") == "asyncio":
        pytest.skip("runs once, in the default-reactor pass: its processes run the default reactor")
    clip = tmp_path / "clip.mp4"
    subprocess.run([tool("ffmpeg"), "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25",
                    "-f", "lavfi", "-i", "sine=frequency=330", "-t", "3", "-c:v", "libx264", "-preset", "ultrafast",
                    "-c:a", "aac", str(clip)], check=True, timeout=60)
    key = os.urandom(12).hex()
    env = dict(os.environ, FBSTREAM_API_KEY=key)
    seconds = 36
    lines: list = []
    pop2 = Node("pop2", "pop", [], str(tmp_path))
    cutter = None
    try:
        with all_role_process(tmp_path, extra=(), env=env) as (ports, log):
            pop = "http://127.0.0.1:%d" % (ports["pop"],)
            pop2.args = origin_pop_args("pop2", ports["origin"])
            pop2.start()
            created = urllib.request.urlopen(urllib.request.Request(
                pop + "/api/v1/live_videos", data=b'{"title": "from a file"}',
                headers={"authorization": "Bearer " + key}), timeout=30)
            video = json.loads(created.read())
            cutter = Cutter(ports["rtmp"])
            ingest = "rtmp://127.0.0.1:%d/live/%s" % (cutter.port, video["stream_key"])
            broadcaster = subprocess.Popen(
                [sys.executable, "-m", "fbstream.broadcast", "--url", ingest, "--json", "--source", "file:%s" % (clip,),
                 "--size", "426x240", "--bitrate", "600", "--duration", str(seconds),
                 "--pop", "http://127.0.0.1:%d" % (pop2.http,)],
                stdout=subprocess.PIPE, stderr=open(tmp_path / "broadcast.log", "wb"), text=True, env=env)
            reader = threading.Thread(target=_lines, args=(broadcaster.stdout, lines), daemon=True)
            reader.start()
            manifest = pop + "/live/%s/manifest.mpd" % (video["id"],)
            assert ok_within(manifest, 30) == 200, (tmp_path / "broadcast.log").read_text()[-3000:]
            began = time.time()
            viewer = subprocess.Popen(
                [sys.executable, "-m", "fbstream.load", pop, "--streams", video["id"], "--viewers", "2",
                 "--seconds", str(seconds - 8), "--json", str(tmp_path / "viewers.json")],
                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "viewers.log", "wb"), env=env)
            assert ok_within("http://127.0.0.1:%d/live/%s/manifest.mpd" % (pop2.http, video["id"]), 20) == 200
            time.sleep(max(0.0, began + 6 - time.time()))
            text = "hello \x1b[2J<b>from pop1</b>"
            posted = time.time()
            urllib.request.urlopen(urllib.request.Request(
                pop + "/api/v1/live_videos/%s/comments" % (video["id"],),
                data=json.dumps({"name": "ann", "text": text}).encode()), timeout=10).read()
            while not any("comment" in line for _, line in lines) and time.time() < posted + 10:
                time.sleep(0.05)
            shown_at = next((t for t, line in lines if "comment" in line), None)
            time.sleep(max(0.0, began + 14 - time.time()))
            cutter.cut()
            cut_at = time.time()
            while not any(line.get("connections") == 2 and line["state"] == "live" for _, line in lines) \
                    and time.time() < cut_at + 20:
                time.sleep(0.2)
            back_at = next((t for t, line in lines if line.get("connections") == 2 and line["state"] == "live"), None)
            assert viewer.wait(seconds) == 0, (tmp_path / "viewers.log").read_text()[-3000:]
            with urllib.request.urlopen(manifest, timeout=10) as response:
                numbers = _available(response.read().decode())
            missing = [(rendition, n) for rendition in ("240p", "audio") for n in numbers
                       if ok_within(pop + "/live/%s/%s/%d.m4s" % (video["id"], rendition, n), 1) != 200]
            broadcaster.wait(seconds + 30)
            reader.join(10)

            # Going live through the live API, as a newcomer would.
            api_run = subprocess.run(
                [sys.executable, "-m", "fbstream.broadcast", "--api", pop, "--rtmp", "--title", "through the API",
                 "--json", "--size", "320x240", "--bitrate", "300", "--duration", "6"],
                capture_output=True, text=True, env=env, timeout=60)
            listed = json.loads(urllib.request.urlopen(urllib.request.Request(
                pop + "/api/v1/live_videos", headers={"authorization": "Bearer " + key}), timeout=10).read())
    finally:
        pop2.kill()
        if cutter is not None:
            cutter.close()
    comment = next(line["comment"] for _, line in lines if "comment" in line) if shown_at else None
    seen = json.loads((tmp_path / "viewers.json").read_text())["summary"]
    audience = [line.get("viewers") for _, line in lines if "state" in line]
    print("broadcast from a file: viewers shown %s; comment shown after %s s; connection cut, live again after %s s; "
          "viewers %s; %d segments of each, %d missing; through the API: %s" % (
              sorted(set(audience), key=str), round(shown_at - posted, 2) if shown_at else None, round(back_at - cut_at, 2) if back_at else None,
              json.dumps({k: seen.get(k) for k in ("errors", "stalls", "stalled_seconds", "rebuffer_ratio")}),
              len(numbers), len(missing), api_run.stdout.splitlines()[-1:] if api_run.stdout else api_run.stderr[-500:]))
    assert broadcaster.returncode == 0, (tmp_path / "broadcast.log").read_text()[-3000:]
    # The two simulated viewers, counted at their PoP, in the comments track.
    assert audience.count(2) >= 10, audience
    assert shown_at is not None and shown_at - posted <= 2.0, lines[-5:]
    # As text: the markup kept, the escape gone (the PoP takes control
    # characters out; the broadcaster would show any left as \\u001b).
    assert comment is not None and comment["name"] == "ann" and comment["text"] == "hello [2J<b>from pop1</b>", comment
    assert back_at is not None and back_at - cut_at <= 10, (tmp_path / "broadcast.log").read_text()[-3000:]
    # Connections: the first, perhaps one the server refused while it still
    # held the first (it lets a new one take over once the old is silent
    # 3 s), and the one it took.
    assert 2 <= cutter.accepted <= 4, cutter.accepted
    # The viewers watched on: no error, and no stall longer than the
    # broadcaster was away (no media came meanwhile; the viewers' buffer,
    # a live latency of 2 to 4 s, rides out most of it).
    away = back_at - cut_at
    assert seen["errors"] == {} and seen["started"] == 2, seen
    assert seen["stalled_seconds"] <= 2 * away and seen["stalls"] <= 2 * 2, (away, seen)
    assert not missing and len(numbers) >= seconds - 12, missing
    assert api_run.returncode == 0, api_run.stderr[-3000:]
    api_lines = [json.loads(line) for line in api_run.stdout.splitlines() if line.startswith("{")]
    assert any(line["state"] == "live" and line["upload_kbps"] > 100 for line in api_lines), api_lines
    # Stopped, it ended its live video: the replay stays at the same URLs.
    assert [v["status"] for v in listed["live_videos"] if v["title"] == "through the API"] == ["ended"], listed


@pytest_twisted.inlineCallbacks
def test_the_broadcaster_publishes_h264_and_aac_over_rtmps(pop, tls_files):
    _, cert = tls_files
    publishing = run(sys.executable, "-m", "fbstream.broadcast", "--url", pop.url("tlscam", tls=True), "--ca", cert,
                     "--size", "320x240", "--bitrate", "300", "--duration", "4", "--json", timeout=60)
    tally = yield pop.tallies.wait_for("tlscam")
    out, err, code = yield publishing
    yield tally.done
    assert code == 0, err.decode("utf-8", "replace")[-3000:]
    video, audio = tally.of_type(VIDEO), tally.of_type(AUDIO)
    # The sequence headers first, then a keyframe; 30 frames a second, AAC beside them.
    assert video[0].payload[:2] == b"\x17\x00" and video[1].payload[:2] == b"\x17\x01", video[:2]
    assert audio[0].payload[:2] == b"\xaf\x00"
    assert len(video) >= 90 and len(audio) >= 150, (len(video), len(audio))
    assert tally.stream.metadata_values["width"] == 320
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert lines and all(line["connections"] == 1 for line in lines), lines


@pytest_twisted.inlineCallbacks
def test_stopping_waits_for_the_live_api_to_end_the_live_video(pop):
    """
    With ``--api``, the broadcaster's last act is to end its live video:
    it exits only once the live API has answered that (here a live API of
    the test's own, slow to answer the end), not as its broadcast stops.
    """
    from twisted.internet import reactor as installed
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET, Site

    reactor: Any = installed
    ends = []

    class LiveVideos(Resource):
        isLeaf = True

        def render_POST(self, request):
            request.setResponseCode(201)
            return json.dumps({"id": "cam", "ingest": {"rtmp": pop.url("cam")},
                               "playback": {"dash": "http://127.0.0.1:1/live/cam/manifest.mpd"}}).encode()

        def render_DELETE(self, request):
            def answer():
                if not request.finished and request.channel is not None:
                    request.write(b'{"status": "ended"}')
                    request.finish()
                    ends.append("answered")
            ends.append(request.path.decode())
            reactor.callLater(1.5, answer)
            return NOT_DONE_YET

    root = Resource()
    api = Resource()
    root.putChild(b"api", api)
    v1 = Resource()
    api.putChild(b"v1", v1)
    v1.putChild(b"live_videos", LiveVideos())
    port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    try:
        out, err, code = yield run(
            sys.executable, "-m", "fbstream.broadcast", "--api", "http://127.0.0.1:%d" % (port.getHost().port,),
            "--rtmp", "--size", "320x240", "--bitrate", "300", "--duration", "3", "--json",
            env=dict(os.environ, FBSTREAM_API_KEY="k"), timeout=60)
    finally:
        yield port.stopListening()
    assert code == 0, err.decode("utf-8", "replace")[-3000:]
    assert ends == ["/api/v1/live_videos/cam", "answered"], (ends, err.decode("utf-8", "replace")[-2000:])
    assert b"live video cam ended" in err, err.decode("utf-8", "replace")[-2000:]
