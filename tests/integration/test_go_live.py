"""
Going live as a newcomer does, from the README: start the ``all`` role (no
demo), open the link it prints, press *Go live* on the page, point the ffmpeg
tool at the Server and Stream Key the page shows, and watch the video play in
the page. Authentication stays on all along: the link works once, and
neither it nor the stream token reaches the log.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

import pytest_twisted
import treq

from .conftest import ROOT, run, sleep
from .test_twistd import all_role_process, wait_for_ok

LINK = re.compile(r"(http://\S+/\?login=(\S+))")


@pytest_twisted.inlineCallbacks
def test_a_newcomer_goes_live_from_the_page_and_watches(tmp_path, request):
    if request.config.getoption("reactor", "default") == "asyncio":
        import pytest

        pytest.skip("drives a browser and a server process of its own: the default-reactor pass runs it")
    env = dict(os.environ, PYTHONPATH=ROOT)
    stderr = tmp_path / "stderr.txt"
    with all_role_process(tmp_path, extra=(), env=env, stderr=stderr) as (ports, log):
        deadline = time.monotonic() + 30
        while not LINK.search(stderr.read_text()) and time.monotonic() < deadline:
            yield sleep(0.2)
        found = LINK.search(stderr.read_text())
        assert found, "no login link on standard error: %r" % (stderr.read_text()[-2000:],)
        link, code = found.groups()
        assert link.startswith("http://127.0.0.1:%d/" % (ports["pop"],))

        out, err, status = yield run(sys.executable, "-m", "tests.integration.browser", "--go-live", link,
                                     "my first show", env=env, timeout=120)
        assert status == 0, err.decode("utf-8", "replace")[-3000:]
        shown = json.loads(out.decode().strip().splitlines()[-1])
        assert shown["server"] == "rtmp://127.0.0.1:%d/live" % (ports["rtmp"],), shown
        video_id, _, query = shown["key"].partition("?")
        assert re.fullmatch(r"[0-9a-f]{16}", video_id) and query.startswith("token="), shown
        assert shown["watch"] == "?v=" + video_id
        assert "login" not in shown["address"], shown["address"]
        # The link worked once: another browser opening it is told so and gets no button.
        assert "used up" in shown["second_use"] and shown["second_use_button_hidden"], shown

        # What the page says OBS needs, given to the ffmpeg tool.
        publishing = run("ffmpeg", "-hide_banner", "-loglevel", "error", "-re",
                         "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30",
                         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
                         "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "30",
                         "-c:a", "aac", "-t", "40", "-f", "flv", shown["server"] + "/" + shown["key"],
                         timeout=90)
        manifest = "http://127.0.0.1:%d/live/%s/manifest.mpd" % (ports["pop"], video_id)
        ok = yield wait_for_ok(manifest, 30)
        assert ok == 200, log.read_text()[-3000:]
        watched = yield run(sys.executable, "-m", "tests.integration.browser",
                            "http://127.0.0.1:%d/%s" % (ports["pop"], shown["watch"]), 20,
                            tmp_path / "watching.png", env=env, timeout=120)
        out, err, status = watched
        assert status == 0, err.decode("utf-8", "replace")[-3000:]
        seen = json.loads(out.decode().strip().splitlines()[-1])
        samples, summary = seen["samples"], seen["summary"]
        assert samples and samples[-1]["currentTime"] - samples[0]["currentTime"] > 15, summary
        assert summary["failed"] == [], summary
        assert any(video_id in v for v in seen["listing"]), seen["listing"]

        # The API lists it live; the broadcaster's token never reached the log.
        response = yield treq.get("http://127.0.0.1:%d/api/v1/live_videos" % (ports["pop"],))
        assert response.code == 401  # without a key or a session
        out, err, status = yield publishing
        assert status == 0, "ffmpeg could not publish: %s" % (err.decode("utf-8", "replace")[-2000:],)
    text = log.read_text()
    token = query.partition("=")[2]
    assert code not in text, "the login code is in the log"
    assert token not in text and token.split(".")[-1] not in text, "the stream token is in the log"
