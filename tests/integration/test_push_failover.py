"""
The origin a PoP is pushed a stream by dies mid-stream, while the page's
dash.js plays that stream from the PoP in headless Chromium (issue 12).

Real processes on one etcd: an encoder, a dc-proxy, two origins alike (each
pushed to by the encoder, each taking the PoP's subscriptions), and a PoP
whose cache layer fetches from both and subscribes to each stream at the
one its ring of ``push.origins`` names. The ffmpeg tool publishes through
the PoP with the live video's token.

About 12 s into the viewer's playing, the origin its stream is pushed from
(A) is killed with SIGKILL: the PoP's push channel goes down, it falls back
to TTL pulls (its fetches of A's paths go over to the other origin, B), and
the viewer plays on. 12 s later A is started again: the PoP subscribes at A
again and is pushed the stream again, the viewer still playing. The viewer
never stalls and none of its media requests fails or is cut off, the
criteria of ``test_playback``.

B takes subscriptions as A does because origins are deployed alike: the
PoP's ring would send other streams there. This one's subscription does not
move to B while A is down: the fallback is TTL pulls (the design's, and the
issue's), which B serves; B's push gauges show it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from fbstream.cache.ring import HashRing

from .conftest import ROOT, tool
from .test_ingest_path import create_video, ingest
from .test_playback import stalls_in
from .test_push import metrics, ok_within, part_hint, value
from .topology import Topology

#: Seconds the viewer watches (from its first frame).
SECONDS = 45
#: Seconds into its watching that origin A is killed, and how long it stays dead.
KILL_AT = 12.0
OUTAGE = 12.0
#: What is read of each role's /metrics each second: (column, metric, tier).
POP = [("received", "fbstream_push_received_total", "pop-cache"),
       ("fallback", "fbstream_push_fallback_seconds_total", "pop-cache"),
       ("fetches", "fbstream_cache_upstream_fetches_total", "pop-cache"),
       ("errors", "fbstream_cache_upstream_errors_total", "pop-cache")]
ORIGIN = [("subs", "fbstream_push_subscriptions", "origin"), ("requests", "fbstream_cache_requests_total", "origin")]
ENCODER = [("subs", "fbstream_push_subscriptions", "encoder")]


@pytest.fixture
def dc(request, tmp_path, etcd, tls_files):
    # Under the reactor this pytest run uses: the suite runs once per reactor.
    reactor = request.config.getoption("reactor", "default")
    topology = Topology(tmp_path, etcd.url, tls_files, encoders=1, dc_proxies=1, origins=2, pops=1,
                        push=True, reactor="asyncio" if reactor == "asyncio" else "default").start()
    yield topology
    topology.stop()


def read(port, columns):
    """``columns`` of a role's /metrics now (None: it does not answer)."""
    try:
        text = metrics(port)
    except OSError:
        return None
    return {column: value(text, name, tier) for column, name, tier in columns}


class Timeline:
    """What each tier's metrics said, once a second, and what the test did when."""

    def __init__(self, dc, a, b, playlist):
        self.dc, self.a, self.b, self.playlist = dc, a, b, playlist
        self.samples = []
        self.events = []
        self.zero = None

    def sample(self):
        try:
            with urllib.request.urlopen(self.playlist, timeout=5) as response:
                edge = part_hint(response.read())
        except (OSError, AssertionError):
            edge = None
        self.samples.append({
            "wall": time.time(), "edge": edge, "pop": read(self.dc.pops[0].http, POP),
            "A": read(self.a.http, ORIGIN), "B": read(self.b.http, ORIGIN),
            "encoder": read(self.dc.encoders[0].http, ENCODER)})

    def until(self, deadline, done=lambda: False):
        """Sample once a second until the wall clock passes ``deadline`` or ``done()``."""
        while time.time() < deadline and not done():
            self.sample()
            time.sleep(max(0.0, min(1.0, deadline - time.time())))

    def event(self, what):
        self.events.append((time.time(), what))

    def at(self, wall):
        """The last sample taken at or before ``wall``."""
        return [s for s in self.samples if s["wall"] <= wall][-1]

    def between(self, start, end):
        return [s for s in self.samples if start <= s["wall"] <= end]

    def stale_seconds(self):
        """The longest the PoP's playlist announced the same next part for (as seen once a second)."""
        longest, since, last = 0.0, None, None
        for s in self.samples:
            if s["edge"] is None:
                continue
            if s["edge"] != last:
                since, last = s["wall"], s["edge"]
            longest = max(longest, s["wall"] - since)
        return longest

    def __str__(self):
        zero = self.zero or (self.samples[0]["wall"] if self.samples else 0.0)

        def cols(row, columns):
            if row is None:
                return "down"
            return " ".join("%s=%g" % (c, round(row[c], 1)) for c, _, _ in columns)

        lines = ["t from the first frame; pop = the PoP's cache layer; A = the origin killed, B = the other"]
        events = list(self.events)
        for s in self.samples:
            while events and events[0][0] <= s["wall"]:
                lines.append("%+6.1f  ** %s" % (events[0][0] - zero, events.pop(0)[1]))
            lines.append("%+6.1f  pop %s edge=%s | A %s | B %s | encoder %s" % (
                s["wall"] - zero, cols(s["pop"], POP), s["edge"], cols(s["A"], ORIGIN), cols(s["B"], ORIGIN),
                cols(s["encoder"], ENCODER)))
        lines += ["%+6.1f  ** %s" % (when - zero, what) for when, what in events]
        return "\n".join(lines)


def playing_since(path):
    """The wall clock of the viewer's first frame, once the browser has printed it (else None)."""
    with open(path) as f:
        for line in f:
            with contextlib.suppress(ValueError):
                seen = json.loads(line)
                if "playing" in seen:
                    return seen["playing"]
    return None


def tail(path, n=3000):
    with contextlib.suppress(OSError), open(path, "rb") as f:
        return f.read().decode("utf-8", "replace")[-n:]
    return ""


def test_a_viewer_plays_on_while_the_origin_pushing_its_stream_dies_and_comes_back(dc, tmp_path):
    pop = dc.pops[0]
    video = create_video(pop)
    vid = video["id"]
    # The origin the PoP's ring names for this stream is the one killed.
    ring = HashRing(dc.origins, dc.push_origins())
    a, b = ring.walk(vid.encode())
    base = "http://127.0.0.1:%d" % (pop.http,)
    timeline = Timeline(dc, a, b, base + "/live/%s/240p/playlist.m3u8" % (vid,))
    out, err = tmp_path / "browser.out", tmp_path / "browser.err"
    publisher = browser = None
    try:
        publisher = subprocess.Popen(
            [tool("ffmpeg"), "-hide_banner", "-loglevel", "error", "-re",
             "-f", "lavfi", "-i", "testsrc2=size=426x240:rate=30", "-f", "lavfi", "-i", "sine=frequency=330",
             "-t", "150", "-c:v", "libx264", "-preset", "veryfast", "-g", "30", "-c:a", "aac",
             "-f", "flv", ingest(pop, video, tls=False)],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "publisher.err", "wb"))
        assert ok_within(base + "/live/%s/manifest.mpd" % (vid,), 40) == 200, pop.log()[-3000:]
        # Its own session: Chromium and Playwright's driver go with it.
        browser = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.browser", base + "/?v=" + vid, str(SECONDS),
             str(tmp_path / "player.png")], cwd=ROOT, stdout=open(out, "wb"), stderr=open(err, "wb"),
            env=dict(os.environ, FBSTREAM_BROWSER_CONSOLE=str(tmp_path / "console.log")), start_new_session=True)
        timeline.until(time.time() + 45, lambda: playing_since(out) is not None or browser.poll() is not None)
        playing = playing_since(out)
        assert playing is not None, "the viewer never played\n%s\n%s" % (tail(err), timeline)
        timeline.zero = playing
        timeline.event("the viewer's first frame")

        timeline.until(playing + KILL_AT)
        subscribed = timeline.samples[-1]
        a.kill()
        killed = time.time()
        timeline.event("origin A killed (SIGKILL)")
        timeline.until(killed + OUTAGE)
        timeline.event("origin A starting again")
        a.start()
        back = time.time()
        timeline.event("origin A serving again")
        timeline.until(playing + SECONDS + 40, lambda: browser.poll() is not None)
        browser_code = browser.wait(timeout=30)
        timeline.sample()
    finally:
        if browser is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(browser.pid, signal.SIGKILL)
            browser.wait()
        if publisher is not None:
            publisher.kill()
            publisher.wait()

    (tmp_path / "timeline.txt").write_text(str(timeline))
    lines = [line for line in out.read_text().splitlines() if line.strip()]
    assert browser_code == 0 and lines, "the browser exited %s\n%s\n%s" % (browser_code, tail(err), timeline)
    seen = json.loads(lines[-1])
    summary, samples = seen["summary"], seen["samples"]
    ended = samples[-1]["wall"] if samples else playing
    why = "\n".join([
        "viewer: " + json.dumps({k: v for k, v in summary.items() if k != "aborted"}),
        "stall log: " + json.dumps(summary["stall_log"]),
        "stalls by the second (where, for how long): %s" % (stalls_in(samples),),
        "metrics timeline:", str(timeline),
        "PoP log:", pop.log()[-3000:], "origin A log:", a.log()[-2000:], "origin B log:", b.log()[-2000:],
        "browser: " + tail(err, 2000), "(all in %s)" % (tmp_path,)])

    # Before the kill: the PoP was subscribed at A (not B), A at the
    # encoder, and pushes were flowing into the PoP's cache layer.
    before = timeline.at(killed - 5)
    assert subscribed["A"]["subs"] == 1 and subscribed["B"]["subs"] == 0, why
    assert subscribed["encoder"]["subs"] == 1, why
    assert subscribed["pop"]["received"] - before["pop"]["received"] > 20, why
    # While A was dead: the PoP's channel was down (nothing pushed), it
    # counted the seconds in fallback, and fetched instead, from B.
    down = timeline.between(killed + 2, back)
    assert down and all(s["A"] is None for s in timeline.between(killed + 0.5, back - 0.5)), why
    outage = timeline.at(back)
    assert outage["pop"]["received"] == down[0]["pop"]["received"], why
    assert outage["pop"]["fallback"] - subscribed["pop"]["fallback"] >= OUTAGE / 2, why
    assert outage["pop"]["fetches"] - subscribed["pop"]["fetches"] >= 8, why
    assert outage["B"]["requests"] - subscribed["B"]["requests"] >= 8, why
    assert outage["B"]["subs"] == 0, why  # the subscription stayed A's: TTL pulls meanwhile
    # A back: the PoP subscribed there again and was pushed to again, while
    # the viewer still played, and its fallback ended.
    again = [s for s in timeline.between(back, ended)
             if s["A"] is not None and s["A"]["subs"] == 1 and s["pop"]["received"] > outage["pop"]["received"]]
    assert again, "the PoP never subscribed at A again while the viewer played\n" + why
    resubscribed = again[0]
    last = timeline.samples[-1]
    assert last["pop"]["received"] - resubscribed["pop"]["received"] > 10, why
    assert last["pop"]["fallback"] - resubscribed["pop"]["fallback"] < 1.0, why
    # The PoP's playlist moved on throughout.
    stale = timeline.stale_seconds()
    assert stale <= 4.0, "the PoP's playlist stood still for %.1f s\n%s" % (stale, why)

    figures = {
        "killed at": round(killed - playing, 1), "back at": round(back - playing, 1),
        "resubscribed at": round(resubscribed["wall"] - playing, 1),
        "fallback seconds": round(last["pop"]["fallback"], 1),
        "fetches while down": outage["pop"]["fetches"] - subscribed["pop"]["fetches"],
        "B's requests while down": outage["B"]["requests"] - subscribed["B"]["requests"],
        "pushes received before, after": (subscribed["pop"]["received"],
                                          last["pop"]["received"] - outage["pop"]["received"]),
        "playlist unchanged at most": round(stale, 1),
        "viewer": {k: summary[k] for k in ("seconds", "stalls", "stalled_seconds", "latency_p50", "latency_p95",
                                           "failed_count", "aborted_count")},
    }
    print("origin failover: " + json.dumps(figures))
    # The viewer: dash.js played the whole time, before, during and after.
    assert summary["engine"] == "dash.js", why
    assert len(samples) >= SECONDS - 2, why
    assert samples[0]["wall"] < killed - 5 and back + 5 < ended, why
    assert summary["failed"] == [], why
    assert summary["stalls"] == 0, why
    assert stalls_in(samples) == [], why
