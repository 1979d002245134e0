"""
The whole ingest path of real processes: 2 PoPs, 2 dc-proxies, 3 encoders, an
origin and an etcd server. Broadcasters (PyAV, the ffmpeg tool) publish
through a PoP over RTMPS; viewers read from the other PoP. Then the
broadcaster's connection, the dc-proxy in use and the owning encoder are
killed in turn, and the same live video goes on.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request

import pytest
import pytest_twisted
from twisted.internet import defer, task

from fbstream.live.tokens import KeyRing

from .conftest import eventually, pyav_counts, pyav_publish, run, sleep, tool
from .topology import TOKEN_KEYS, Topology, http

LEASE = 3.0


@pytest.fixture(scope="module")
def dc(tmp_path_factory, etcd, tls_files):
    topology = Topology(tmp_path_factory.mktemp("dc"), etcd.url, tls_files, lease=LEASE).start()
    yield topology
    topology.stop()


def create_video(pop):
    code, body = http("POST", "http://127.0.0.1:%d/api/v1/live_videos" % (pop.http,), b'{"title": "t"}')
    assert code == 201, body
    return json.loads(body)


def ingest(pop, video, tls=True):
    if tls:
        return "rtmps://127.0.0.1:%d/live/%s" % (pop.rtmps, video["stream_key"])
    return "rtmp://127.0.0.1:%d/live/%s" % (pop.rtmp, video["stream_key"])


def state(pop, vid):
    code, body = http("GET", "http://127.0.0.1:%d/api/v1/live_videos/%s" % (pop.http, vid))
    assert code == 200, body
    return json.loads(body)


class Viewer:
    """Polls a rendition's HLS playlist at a PoP throughout, fetching each new segment."""

    def __init__(self, pop, vid):
        self.base = "http://127.0.0.1:%d/live/%s/240p/" % (pop.http, vid)
        self.polls = []
        self.fetched = {}
        self.loop = task.LoopingCall(self.poll)

    def poll(self):
        code, body = http("GET", self.base + "playlist.m3u8", key=None)
        if code != 200:
            return
        text = body.decode()
        numbers = [int(n) for n in re.findall(r"^(\d+)\.m4s$", text, re.M)]
        self.polls.append((time.monotonic(), numbers, text))
        for n in numbers[-2:]:
            if n not in self.fetched:
                self.fetched[n] = http("GET", self.base + "%d.m4s" % (n,), key=None)[0]

    def start(self):
        self.loop.start(0.5)

    def stop(self):
        self.loop.stop()

    def check_never_lost(self, polls=None):
        seen: set[int] = set()
        for _, numbers, _ in self.polls[:polls]:
            assert numbers == sorted(set(numbers)), "segments out of order or repeated"
            lost = seen - set(numbers)
            assert not lost, "the manifest lost segments %s" % (sorted(lost),)
            seen |= set(numbers)
        assert all(code == 200 for code in self.fetched.values()), self.fetched
        return seen


def gap_seconds(playlist):
    """The wall-clock gap at the discontinuity of an HLS media playlist."""
    lines = playlist.splitlines()
    times = []
    for i, line in enumerate(lines):
        if line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
            stamp = line.split(":", 1)[1]
            times.append((i, time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) + float(stamp[19:-1] or 0)))
    assert "#EXT-X-DISCONTINUITY" in lines
    disc = lines.index("#EXT-X-DISCONTINUITY")
    before = [t for i, t in times if i < disc]
    after = [t for i, t in times if i > disc]
    seg_count_before = sum(1 for line in lines[:disc] if line.startswith("#EXTINF") and
                           lines.index(line) > max(i for i, _ in times if i < disc))
    durations = [float(line[8:].rstrip(",")) for line in lines[:disc] if line.startswith("#EXTINF")]
    end_before = before[-1] + sum(durations[-seg_count_before:]) if seg_count_before else before[-1]
    return after[0] - end_before


@pytest_twisted.inlineCallbacks
def test_tokens_are_checked_at_the_encoder(dc):
    video = create_video(dc.pops[0])
    other = create_video(dc.pops[0])
    pop = dc.pops[0]
    bad = {
        "forged": "%s?token=%s" % (video["id"], KeyRing.parse("k1:" + "00" * 32).sign(video["id"], "dc1", time.time())),
        "expired": "%s?token=%s" % (video["id"], KeyRing.parse(TOKEN_KEYS).sign(video["id"], "dc1", time.time() - 7200, 60)),
        "other stream": "%s?token=%s" % (video["id"], other["token"]),
        "missing": video["id"],
        "unknown dc": "%s?token=%s" % (video["id"], KeyRing.parse(TOKEN_KEYS).sign(video["id"], "dc9", time.time())),
    }
    for what, key in bad.items():
        out, err, code = yield run(tool("ffmpeg"), "-hide_banner", "-re", "-f", "lavfi", "-i",
                                   "testsrc2=size=320x240:rate=15", "-t", "3", "-c:v", "libx264",
                                   "-f", "flv", "rtmp://127.0.0.1:%d/live/%s" % (pop.rtmp, key), timeout=60)
        assert code != 0, what
    # Nothing was created for the refused publishes.
    assert state(pop, video["id"])["status"] == "created"
    # A video the API ended refuses its own token from then on.
    code, _ = http("DELETE", "http://127.0.0.1:%d/api/v1/live_videos/%s" % (pop.http, other["id"]))
    assert code == 200
    result = yield pyav_publish(ingest(pop, other), "--duration", "2", "--size", "320x240")
    assert (result[2] != 0 and b"ended" in result[1]) or result[2] != 0
    # The API itself wants its key.
    assert http("GET", "http://127.0.0.1:%d/api/v1/live_videos" % (pop.http,), key="wrong")[0] == 401
    assert http("POST", "http://127.0.0.1:%d/api/v1/live_videos" % (pop.http,), b"[1]")[0] == 400


@pytest_twisted.inlineCallbacks
def test_reconnect_failover_and_fencing(dc):
    pop_a, pop_b = dc.pops
    video = create_video(pop_a)
    vid = video["id"]
    # 1. PyAV publishes over RTMPS through PoP A; a viewer reads PoP B.
    first = pyav_publish(ingest(pop_a, video), "--duration", "8", "--size", "426x240")
    viewer = Viewer(pop_b, vid)
    yield eventually(lambda: state(pop_a, vid)["status"] == "live", what="live")
    viewer.start()
    counts = pyav_counts((yield first))
    assert sum(counts.values()) > 0
    yield eventually(lambda: state(pop_a, vid)["status"] == "interrupted", what="interrupted")
    owner = state(pop_a, vid)["encoder"]
    dropped = time.monotonic()
    yield sleep(2)

    # 2. The broadcaster comes back through PoP B with the ffmpeg tool.
    resumed = time.monotonic()
    second = yield run(tool("ffmpeg"), "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi", "-i",
                       "testsrc2=size=426x240:rate=30", "-f", "lavfi", "-i", "sine=frequency=330",
                       "-t", "6", "-c:v", "libx264", "-preset", "veryfast", "-g", "60", "-c:a", "aac",
                       "-f", "flv", ingest(pop_b, video), timeout=90)
    assert second[2] == 0, second[1][-2000:]
    yield sleep(2)
    after = state(pop_a, vid)
    assert after["encoder"] == owner  # the same encoder, through another PoP and dc-proxy
    seen = viewer.check_never_lost()
    playlist = viewer.polls[-1][2]
    assert "#EXT-X-DISCONTINUITY" in playlist
    assert max(seen) - min(seen) + 1 == len(seen), "numbers go on across the reconnect"
    outage = resumed - dropped
    assert gap_seconds(playlist) <= outage + 2.0
    code, mpd = http("GET", "http://127.0.0.1:%d/live/%s/manifest.mpd" % (pop_b.http, vid), key=None)
    assert code == 200 and mpd.count(b"<Period ") == 2 and b'type="dynamic"' in mpd

    # 3. Kill the dc-proxy PoP A uses first: the next publish goes through the
    # other one and reaches the same encoder.
    dc.dc_proxies[0].kill()
    third = yield pyav_publish(ingest(pop_a, video), "--duration", "4", "--size", "426x240")
    pyav_counts(third)
    assert state(pop_a, vid)["encoder"] == owner
    dc.dc_proxies[0].start()

    # 4. Kill the owning encoder: the next publish waits for its lease to
    # lapse, lands on the next encoder of the ring, under a higher fence.
    index = int(owner[len("encoder"):])
    fence_before = state(pop_a, vid)["fence"]
    before_kill = len(viewer.polls)
    dc.encoders[index].kill()
    fourth = yield pyav_publish(ingest(pop_b, video), "--duration", "6", "--size", "426x240")
    pyav_counts(fourth)
    moved = state(pop_a, vid)
    assert moved["encoder"] != owner and moved["fence"] > fence_before
    viewer.stop()
    # Up to the kill the manifest never lost a segment; after it, the new
    # owner's segments go on from higher numbers (the dead one's are gone
    # with it, except from the caches).
    seen = viewer.check_never_lost(before_kill)
    assert min(viewer.polls[-1][1]) > max(seen)
    code, mpd = http("GET", "http://127.0.0.1:%d/live/%s/manifest.mpd" % (pop_b.http, vid), key=None)
    assert code == 200 and mpd.count(b"<Period ") >= 3, mpd[:2000]

    # The old encoder, restarted, cannot take the stream back: its claim is
    # refused while the new owner holds the lease, with the owner named.
    dc.encoders[index].start()
    direct = "rtmp://127.0.0.1:%d/live/%s" % (dc.encoders[index].rtmp, video["stream_key"])
    out, err, code = yield run(tool("ffmpeg"), "-hide_banner", "-re", "-f", "lavfi", "-i",
                               "testsrc2=size=320x240:rate=15", "-t", "2", "-c:v", "libx264",
                               "-f", "flv", direct, timeout=60)
    assert code != 0
    assert "owned by encoder" in dc.encoders[index].log()


@pytest_twisted.inlineCallbacks
def test_the_api_ends_a_broadcast_at_once_at_every_tier(dc):
    """
    ``DELETE`` while the broadcaster publishes through PoP A: its connection
    closes with the reason, and within 2 s PoP B serves a static MPD and HLS
    playlists with ``EXT-X-ENDLIST`` (the owning encoder learns of it from an
    etcd watch, and no cache tier adds its lifetime to another's).
    """
    pop_a, pop_b = dc.pops
    video = create_video(pop_a)
    vid = video["id"]
    publishing = run(tool("ffmpeg"), "-hide_banner", "-re", "-f", "lavfi", "-i",
                     "testsrc2=size=426x240:rate=30", "-t", "60", "-c:v", "libx264", "-preset", "veryfast",
                     "-g", "30", "-f", "flv", ingest(pop_a, video, tls=False), timeout=90)
    mpd_url = "http://127.0.0.1:%d/live/%s/manifest.mpd" % (pop_b.http, vid)
    playlist_url = "http://127.0.0.1:%d/live/%s/240p/playlist.m3u8" % (pop_b.http, vid)
    yield eventually(lambda: http("GET", mpd_url, key=None)[0] == 200, what="the live MPD at PoP B")
    # Viewers at PoP B keep the manifests in its caches, as players do.
    for _ in range(4):
        assert b'type="dynamic"' in http("GET", mpd_url, key=None)[1]
        assert b"#EXT-X-ENDLIST" not in http("GET", playlist_url, key=None)[1]
        yield sleep(0.5)
    code, body = http("DELETE", "http://127.0.0.1:%d/api/v1/live_videos/%s" % (pop_a.http, vid))
    assert code == 200 and json.loads(body)["status"] == "ended", body
    ended = time.monotonic()
    yield eventually(lambda: b'type="static"' in http("GET", mpd_url, key=None)[1]
                   and b"#EXT-X-ENDLIST" in http("GET", playlist_url, key=None)[1],
                   timeout=10, what="a static MPD and ENDLIST at PoP B")
    took = time.monotonic() - ended
    out, err, code = yield publishing
    stopped = time.monotonic() - ended
    print("ended at PoP B after %.2f s; the broadcaster's ffmpeg exited after %.2f s (%d)" % (took, stopped, code))
    assert took <= 2.0, "PoP B still served the live manifests %.2f s after the DELETE" % (took,)
    assert code != 0 and stopped < 10, (code, stopped, err[-2000:])
    assert state(pop_a, vid)["status"] == "ended"

    # A broadcast whose broadcaster is away (the encoder waits 30 s for it
    # to come back) ends at once too.
    video = create_video(pop_a)
    vid = video["id"]
    yield pyav_publish(ingest(pop_a, video), "--duration", "5", "--size", "320x240")
    yield eventually(lambda: state(pop_a, vid)["status"] == "interrupted", what="interrupted")
    mpd_url = "http://127.0.0.1:%d/live/%s/manifest.mpd" % (pop_b.http, vid)
    assert b'type="dynamic"' in http("GET", mpd_url, key=None)[1]
    code, body = http("DELETE", "http://127.0.0.1:%d/api/v1/live_videos/%s" % (pop_a.http, vid))
    assert code == 200, body
    ended = time.monotonic()
    yield eventually(lambda: b'type="static"' in http("GET", mpd_url, key=None)[1], timeout=40,
                   what="a static MPD at PoP B")
    took = time.monotonic() - ended
    print("an interrupted broadcast ended at PoP B after %.2f s" % (took,))
    assert took <= 2.0, "PoP B still served a live MPD %.2f s after the DELETE" % (took,)


def mpd_at(pop, vid):
    """(Cache-Control, MPD) of a live video's manifest at a PoP, as a viewer gets them."""
    url = "http://127.0.0.1:%d/live/%s/manifest.mpd" % (pop.http, vid)
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.headers.get("Cache-Control", ""), response.read()


@pytest_twisted.inlineCallbacks
def test_an_encoder_restart_keeps_an_interrupted_video_live(dc):
    """
    The owning encoder restarts (SIGTERM, then started again) while the
    broadcaster is away. Its archive brings the video back interrupted, not
    ended: PoP B goes on serving a live MPD, never a static one nor one a
    cache keeps for a minute, and the broadcaster's next publish continues
    the same video.
    """
    pop_a, pop_b = dc.pops
    video = create_video(pop_a)
    vid = video["id"]
    yield pyav_publish(ingest(pop_a, video), "--duration", "5", "--size", "320x240")
    yield eventually(lambda: state(pop_a, vid)["status"] == "interrupted", what="interrupted")
    owner = state(pop_a, vid)["encoder"]
    cache_control, mpd = mpd_at(pop_b, vid)
    assert b'type="dynamic"' in mpd, mpd[:1000]
    dc.encoders[int(owner[len("encoder"):])].restart()
    # Every tier's copy of the manifest from before the restart has expired
    # within 10 s; what the PoP serves after that came from the restarted
    # encoder.
    served = []
    until = time.monotonic() + 10
    while time.monotonic() < until:
        cache_control, mpd = mpd_at(pop_b, vid)
        kind = re.search(rb'type="(\w+)"', mpd)
        assert kind, mpd
        served.append((cache_control, kind.group(1).decode()))
        yield sleep(0.5)
    assert {kind for _, kind in served} == {"dynamic"}, served
    assert all("max-age=60" not in cache_control for cache_control, _ in served), served
    assert state(pop_a, vid)["status"] == "interrupted"
    # The broadcaster comes back within its grace period, through PoP B.
    pyav_counts((yield pyav_publish(ingest(pop_b, video), "--duration", "4", "--size", "320x240")))
    cache_control, mpd = mpd_at(pop_b, vid)
    assert b'type="dynamic"' in mpd and mpd.count(b"<Period ") >= 2, mpd[:2000]
    assert state(pop_a, vid)["status"] in ("live", "interrupted")


def first_video_packet(path):
    """(flags, pts) of the first video packet of an FLV file, by ffprobe."""
    out = __import__("subprocess").run(
        [tool("ffprobe"), "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=flags,pts_time",
         "-read_intervals", "%+#1", "-of", "csv=p=0", str(path)], capture_output=True, text=True, timeout=30)
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


@pytest_twisted.inlineCallbacks
def test_rtmp_players_at_two_pops_share_one_pull_each(dc, tmp_path):
    """
    RTMP playback at the PoPs, the seeds' low-latency path: while the ffmpeg
    tool publishes through PoP A, rtmpdump and the ffmpeg tool play at PoP A
    and PoP B (two players there). Each PoP pulls the stream once, through a
    dc-proxy, from the encoder that owns it; every player starts on a
    keyframe; the pulls end after the last player leaves.
    """
    pop_a, pop_b = dc.pops
    video = create_video(pop_a)
    vid = video["id"]
    publishing = run(tool("ffmpeg"), "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi", "-i",
                     "testsrc2=size=426x240:rate=30", "-f", "lavfi", "-i", "sine=frequency=440",
                     "-t", "40", "-c:v", "libx264", "-preset", "veryfast", "-g", "60", "-c:a", "aac",
                     "-f", "flv", ingest(pop_a, video, tls=False), timeout=90)
    yield eventually(lambda: state(pop_a, vid)["status"] == "live", what="live")
    yield sleep(2)
    # A stream nobody publishes is refused with StreamNotFound, from upstream.
    out, err, code = yield run(tool("rtmpdump"), "-r", "rtmp://127.0.0.1:%d/live/%s" % (pop_b.rtmp, "0" * 16),
                               "-o", str(tmp_path / "none.flv"), timeout=30)
    assert code != 0 and b"StreamNotFound" in err, err[-1000:]
    # rtmpdump plays a live stream until it is stopped (SIGTERM after 10 s,
    # as a viewer closes the player); ffmpeg stops after 8 s of it.
    players = [
        run(tool("rtmpdump"), "-r", "rtmp://127.0.0.1:%d/live/%s" % (pop_a.rtmp, vid), "-o",
            str(tmp_path / "a-rtmpdump.flv"), timeout=10),
        run(tool("rtmpdump"), "-r", "rtmp://127.0.0.1:%d/live/%s" % (pop_b.rtmp, vid), "-o",
            str(tmp_path / "b-rtmpdump.flv"), timeout=10),
        run(tool("ffmpeg"), "-hide_banner", "-loglevel", "error", "-i",
            "rtmp://127.0.0.1:%d/live/%s" % (pop_b.rtmp, vid), "-t", "8", "-c", "copy", "-y",
            str(tmp_path / "b-ffmpeg.flv"), timeout=60),
    ]
    results = yield defer.gatherResults(players)
    for name, (_out, err, code) in zip(("a-rtmpdump", "b-rtmpdump", "b-ffmpeg"), results):
        path = tmp_path / (name + ".flv")
        assert path.exists() and path.stat().st_size > 50_000, (name, code, err[-1000:])
        first = first_video_packet(path)
        assert first is not None and "K" in first.split(",")[-1], (name, first)
        probe = __import__("subprocess").run(
            [tool("ffprobe"), "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
            capture_output=True, text=True, timeout=30)
        assert float(probe.stdout.strip() or 0) >= 5, (name, probe.stdout)
    for pop in (pop_a, pop_b):
        assert pop.log().count("pulling %s from" % (vid,)) == 1, "one pull per PoP"
    # The last player gone, each PoP's pull ends after its linger (5 s).
    yield eventually(lambda: all("pull of %s ended: no players left" % (vid,) in pop.log() for pop in (pop_a, pop_b)),
                   timeout=20, what="the pulls to end")
    out, err, code = yield publishing
    assert code == 0, err[-2000:]
