"""
A viewer's minute: headless Chromium opens the PoP's page of the ``all`` role
and watches the live demo, through every cache tier, for 60 s in real time,
with dash.js and then with hls.js (LL-HLS). The picture never stalls, no
segment, part or playlist request is answered 404 or cut off by the server,
and on loopback the player is on the top rendition from 10 s on.

The server runs under the reactor this pytest run uses (the suite runs once
per reactor), so each player is watched once per reactor. Latency is printed
here and measured in ``bench/playback.py``; it is never asserted on a clock.
"""

from __future__ import annotations

import json
import sys

import pytest
import pytest_twisted

from .conftest import run
from .test_twistd import all_role_process, wait_for_ok

SECONDS = 60


@pytest.fixture(scope="module")
def demo(request, tmp_path_factory):
    reactor = request.config.getoption("reactor", "default")
    directory = tmp_path_factory.mktemp("demo")
    with all_role_process(directory, "asyncio" if reactor == "asyncio" else "default") as (ports, log):
        yield "http://127.0.0.1:%d" % (ports["pop"],), log, directory


def stalls_in(samples):
    """Seconds in which the picture did not move on (sampled once a second)."""
    return [(round(b["currentTime"], 1), round(b["wall"] - a["wall"], 2))
            for a, b in zip(samples, samples[1:]) if b["currentTime"] - a["currentTime"] < 0.5]


@pytest.mark.parametrize("engine, query", [("dash.js", ""), ("hls.js", "&engine=hls")], ids=["dash", "hls"])
@pytest_twisted.inlineCallbacks
def test_a_minute_of_the_demo_without_a_stall(demo, engine, query):
    pop, log, directory = demo
    code = yield wait_for_ok(pop + "/live/demo/manifest.mpd", 40)
    assert code == 200, log.read_text()[-3000:]
    console = directory / ("console-%s.log" % (engine,))
    out, err, code = yield run(
        sys.executable, "-m", "tests.integration.browser", pop + "/?v=demo" + query, str(SECONDS),
        str(directory / ("%s.png" % (engine,))), timeout=SECONDS + 90,
        env=dict(__import__("os").environ, FBSTREAM_BROWSER_CONSOLE=str(console),
                 FBSTREAM_BROWSER_COMMENT="<b>hi</b> from %s" % (engine,)),
    )
    assert code == 0, err.decode()[-3000:]
    seen = json.loads(out.decode().strip().splitlines()[-1])
    summary = seen["summary"]
    samples = seen["samples"]
    why = "%s\n%s\nserver log:\n%s" % (json.dumps(summary), json.dumps(samples)[-6000:], log.read_text()[-3000:])
    print("%s: %s" % (engine, json.dumps({k: v for k, v in summary.items() if k not in ("aborted",)})))
    assert summary["engine"] == engine, why
    assert len(samples) >= SECONDS - 2, why
    # No media request answered 404 or cut off by the server.
    assert summary["failed"] == [], why
    # On loopback: the top rendition, from 10 s after the first frame on.
    top = seen["top"]
    assert top == "720p", why
    settled = [s["rendition"] for s in samples[10:]]
    assert set(settled) == {top}, why
    # No stall: the page's own count (the picture stopping for longer than a
    # frame once playing), and the picture moving on every second. The page
    # starts each player with most of a second in hand, so this holds from
    # the first frame on.
    assert summary["stalls"] == 0, why
    assert stalls_in(samples) == [], why
    # The viewer's comment, posted with the page's form once playing, came
    # back as its second's document and is shown beside the video, as text.
    assert any(c.endswith("<b>hi</b> from %s" % (engine,)) for c in seen["comments"]), (seen["comments"], why)
    assert "<b>hi" not in seen["comments_html"] and "&lt;b&gt;hi" in seen["comments_html"], why
    assert samples[-1]["comments"]["seconds"] >= SECONDS - 5, why  # a document read every second
