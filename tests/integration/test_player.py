"""
A real player across a broadcaster's reconnect: dash.js in headless Chromium
watches a live video on the ``all`` role while the broadcaster (the ffmpeg
tool) drops without a word and publishes again with the same token. The
player waits out the outage and goes on into the new Period by itself,
without a reload.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

import pytest_twisted

from .conftest import ROOT, run, sleep, tool
from .test_twistd import all_role_process, wait_for_ok
from .topology import API_KEY, TOKEN_KEYS, http

LADDER = '["360:600", "240:300"]'
#: Longer than dash.js's retries of a missing segment (3, a second apart).
OUTAGE = 6.0


def broadcast(url, seconds, kill):
    """The ffmpeg tool publishing a test pattern in real time for ``seconds``."""
    return run(tool("ffmpeg"), "-hide_banner", "-loglevel", "error", "-re",
               "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30",
               "-f", "lavfi", "-i", "sine=frequency=330:sample_rate=48000",
               "-c:v", "libx264", "-preset", "veryfast", "-g", "30", "-c:a", "aac",
               "-f", "flv", url, timeout=seconds, kill=kill)


def seconds_of(value):
    """``PT12.345S`` (as our MPDs write it) in seconds."""
    match = re.fullmatch(r"PT(?:(\d+)H)?(?:(\d+)M)?(?:([\d.]+)S)?", value)
    assert match, value
    h, m, s = match.groups()
    return int(h or 0) * 3600 + int(m or 0) * 60 + float(s or 0)


@pytest_twisted.inlineCallbacks
def test_dash_js_plays_on_across_a_reconnect(tmp_path):
    env = dict(os.environ, FBSTREAM_TOKEN_KEYS=TOKEN_KEYS, FBSTREAM_API_KEY=API_KEY, PYTHONPATH=ROOT)
    with all_role_process(tmp_path, extra=("--set", "encoder.encoder.ladder=" + LADDER), env=env) as (ports, log):
        api = "http://127.0.0.1:%d/api/v1/live_videos" % (ports["pop"],)
        code, body = http("POST", api, b'{"title": "reconnect"}')
        assert code == 201, body
        video = json.loads(body)
        url = "rtmp://127.0.0.1:%d/live/%s" % (ports["rtmp"], video["stream_key"])
        pop = "http://127.0.0.1:%d" % (ports["pop"],)

        # The broadcaster's first session ends with SIGKILL: its TCP
        # connection just goes, as when its network drops.
        first = broadcast(url, 18, kill=True)
        code = yield wait_for_ok(pop + "/live/%s/manifest.mpd" % (video["id"],), 30)
        assert code == 200, log.read_text()[-3000:]
        watching = run(sys.executable, "-m", "tests.integration.browser",
                       pop + "/?debug=1&v=" + video["id"], "32", str(tmp_path / "player.png"), timeout=150,
                       env=dict(os.environ, FBSTREAM_BROWSER_CONSOLE=str(tmp_path / "console.log")))
        out, err, code = yield first
        assert code in (-9, 137), (code, err[-2000:])
        dropped = time.time()
        yield sleep(OUTAGE)
        second = broadcast(url, 30, kill=False)
        out, err, code = yield watching
        assert code == 0, err.decode()[-3000:]
        yield second
        seen = json.loads(out.decode().strip().splitlines()[-1])
        code, mpd = http("GET", pop + "/live/%s/manifest.mpd" % (video["id"],), key=None)

    # What the player saw, for whoever reads a failure.
    (tmp_path / "player.json").write_text(json.dumps(seen, indent=1))
    (tmp_path / "manifest.mpd").write_bytes(mpd)
    why = "%s\n%s\n%s" % (json.dumps(seen)[-5000:], mpd.decode()[:3000], log.read_text()[-3000:])
    periods = re.findall(r'<Period id="\d+" start="([^"]+)"(?: duration="([^"]+)")?', mpd.decode())
    assert len(periods) == 2, why
    # The reconnect is a new Period where the first one's content ended: the
    # time the broadcaster was away opens it as a slate, with no gap between.
    (start0, duration0), (start1, _) = periods
    resumed_at = seconds_of(start1)
    assert seconds_of(start0) + seconds_of(duration0) == resumed_at, why
    samples = seen["samples"]
    assert len(samples) >= 30, why
    times = [s["currentTime"] for s in samples]
    before = [s for s in samples if s["wall"] < dropped]
    assert before and before[-1]["currentTime"] > 3, why  # it was playing the first session
    # The player went on into the second Period by itself, on the same page
    # (still dash.js: it never fell back or reloaded), was still playing at
    # the end, and had caught up with the live edge again.
    assert times[-1] > resumed_at + 8, why
    assert all(b > a for a, b in zip(times[-6:], times[-5:])), why
    assert samples[-1]["engine"] == "dash.js", why
    assert samples[-1]["latency"] is not None and samples[-1]["latency"] < 6, why
    stalled = [s["wall"] for s, t in zip(samples[1:], samples) if s["currentTime"] - t["currentTime"] < 0.5]
    print("player: the broadcaster dropped at t=%.1f; the new period starts at t=%.1f; played on to t=%.1f, "
          "stalled %d s, %d stalls, latency at the end %.2f s"
          % (before[-1]["currentTime"], resumed_at, times[-1], len(stalled), samples[-1]["stalls"],
             samples[-1]["latency"]))
