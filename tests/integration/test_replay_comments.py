"""
The replay keeps the comments in time with the video. A broadcaster goes
live through the live API; viewers post comments at the PoP while it is
live; it stops and ends its live video. Then a viewer opens the replay in
Chromium (the page the PoP serves, with dash.js, then with hls.js): each
comment must appear when the replay reaches the moment it was posted, and
again, in step, after the viewer seeks back.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from .test_push import ok_within
from .test_twistd import all_role_process

#: Seconds of broadcast, and the comments posted during it (seconds after it is watchable).
BROADCAST = 24
POSTED_AT = (2, 5, 8, 11, 14)
#: The replay watched for this long; the viewer seeks back to SEEK_TO, SEEK_AFTER seconds in.
WATCH, SEEK_AFTER, SEEK_TO = 38, 16, 4.0
#: How far from the moment it was posted a comment may appear: it is read
#: with the second it was posted in, as the picture enters that second.
IN_STEP = 1.5


def post_comment(port: int, video: str, text: str, source: str) -> int:
    """POST a comment from ``source`` (a viewer's own address: each has its own rate limit)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        connection.request("POST", "/api/v1/live_videos/%s/comments" % (video,),
                           json.dumps({"name": "viewer", "text": text}), {"content-type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_the_replay_shows_each_comment_when_it_reaches_its_moment_and_again_after_a_seek(tmp_path, request):
    if request.config.getoption("reactor", "default") == "asyncio":
        pytest.skip("runs once, in the default-reactor pass: its processes run the default reactor")
    key = os.urandom(12).hex()
    env = dict(os.environ, FBSTREAM_API_KEY=key)
    with all_role_process(tmp_path, extra=(), env=env) as (ports, log):
        pop = "http://127.0.0.1:%d" % (ports["pop"],)
        broadcaster = subprocess.Popen(
            [sys.executable, "-m", "fbstream.broadcast", "--api", pop, "--rtmp", "--title", "replayed",
             "--json", "--size", "320x240", "--bitrate", "300", "--duration", str(BROADCAST)],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "broadcast.log", "wb"), env=env)
        try:
            listing = pop + "/api/v1/live_videos"
            video = None
            deadline = time.monotonic() + 30
            while video is None and time.monotonic() < deadline:
                listed = json.loads(urllib.request.urlopen(urllib.request.Request(
                    listing, headers={"authorization": "Bearer " + key}), timeout=10).read())
                video = next((v["id"] for v in listed["live_videos"] if v["title"] == "replayed"), None)
                time.sleep(0.2)
            assert video is not None, (tmp_path / "broadcast.log").read_text()[-3000:]
            assert ok_within(pop + "/live/%s/manifest.mpd" % (video,), 30) == 200, log.read_text()[-3000:]
            watchable = time.time()
            texts = []
            for i, after in enumerate(POSTED_AT):
                time.sleep(max(0.0, watchable + after - time.time()))
                text = "comment %d" % (i,)
                assert post_comment(ports["pop"], video, text, "127.0.6.%d" % (i + 1,)) == 202
                texts.append(text)
            assert broadcaster.wait(BROADCAST + 30) == 0, (tmp_path / "broadcast.log").read_text()[-3000:]
        finally:
            if broadcaster.poll() is None:
                broadcaster.kill()
        # The end reaches the encoder, and the listing (cached a second), soon after.
        deadline = time.monotonic() + 10
        while True:
            index = json.loads(urllib.request.urlopen(pop + "/live/index.json", timeout=10).read())
            if [v["live"] for v in index["videos"] if v["id"] == video] == [False] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert [v["live"] for v in index["videos"] if v["id"] == video] == [False], index

        for engine in ("dash.js", "hls.js"):
            check_replay(pop, video, engine, texts, tmp_path, log)


def check_replay(pop, video, engine, texts, tmp_path, log):
    """Watch the replay with ``engine``, seeking back once: every comment in step, before and after."""
    env = dict(os.environ, FBSTREAM_BROWSER_SEEK="%d:%s" % (SEEK_AFTER, SEEK_TO))
    url = pop + "/?v=" + video + ("&engine=hls" if engine == "hls.js" else "")
    out = subprocess.run([sys.executable, "-m", "tests.integration.browser", url, str(WATCH)],
                         capture_output=True, text=True, env=env, timeout=WATCH + 90)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    samples = seen["samples"]
    why = "%s\nfailed: %s\nserver log:\n%s" % (json.dumps(seen["summary"]), seen["failed"], log.read_text()[-2000:])
    before = samples[SEEK_AFTER - 1]["comments"]
    after = samples[-1]["comments"]
    print("%s replay: before the seek %s; after it %s" % (
        engine, [(text, round(played - at, 2)) for at, played, text in before["shownAt"]],
        [(text, round(played - at, 2)) for at, played, text in after["shownAt"]]))
    assert seen["summary"]["engine"] == engine and before["replay"] and after["replay"], why
    assert seen["failed"] == [], why
    # Before the seek the replay had played past the first comments, each shown in step.
    shown = [text for _, _, text in before["shownAt"]]
    assert shown == texts[:len(shown)] and len(shown) >= 3, why
    assert all(abs(played - at) <= IN_STEP for at, played, _ in before["shownAt"]), why
    # The seek back started the list again, and every comment came again in step.
    shown = [text for _, _, text in after["shownAt"]]
    assert shown == texts, why
    assert all(abs(played - at) <= IN_STEP for at, played, _ in after["shownAt"]), why
    assert samples[-1]["currentTime"] < SEEK_TO + WATCH - SEEK_AFTER + 2, why
