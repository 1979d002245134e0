"""
The player's adaptive bitrate against a real network limit: dash.js in
headless Chromium, in a network namespace of its own, watches the demo
through a veth pair whose server end is a ``tbf`` token bucket
(:mod:`.netlimit`). The link carries 5 Mbit/s, then 800 kbit/s, then
5 Mbit/s again, changed while the player plays. It must play the top
rendition on the fast link, step down to one that fits when the link
narrows, step up again when it widens, never stall for more than a second,
and never see a media request answered 404 or cut off.

Through a real limit a chunk takes as long to arrive as the link makes it
take, so dash.js's moof-parsing estimate is the link's rate, not the
twice-the-rendition it reads on loopback: each sample also carries
dash.js's own estimate (``throughput``, kbit/s), printed per phase.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import sys
import time

import pytest
import pytest_twisted
import treq

from . import netlimit
from .conftest import ROOT, run, sleep
from .test_twistd import all_role_process, wait_for_ok

#: (kbit/s, seconds) from the viewer's launch. The first phase also holds the
#: browser's start and the first frame (about 5 s here), leaving the player
#: 20 s or more on the top rendition; the narrow phase is twice the 15 s it
#: has to step down in, so a step down that overshoots or comes back up is
#: seen too; the last is the 20 s it has to step up in, twice, because
#: dash.js only climbs once its estimate has averaged over several segments.
PHASES = ((5000, 30), (800, 30), (5000, 40))
#: The ladder's renditions that fit 800 kbit/s with the 64 kbit/s audio
#: beside them: 360p (600 kbit/s) and 240p (300 kbit/s).
FITS_HEIGHT = 360
#: How soon after the limit the player must have stepped down, and up.
DOWN_WITHIN = 15.0
UP_WITHIN = 20.0
LONGEST_STALL = 1.0

def stalls_of(samples):
    """
    Every stall seen, as (wall time it began, seconds), from two witnesses:
    the page's ``stalledSeconds``, which grows by a stall's length when it
    ends (two ending between the same samples count as one, the longer for
    it), and the media clock: ``currentTime`` not moving from one sample to
    the next means frozen at least for the time between them.
    """
    found = []
    frozen_since = None
    for before, after in itertools.pairwise(samples):
        grew = after.get("stalledSeconds", 0) - before.get("stalledSeconds", 0)
        if grew > 0.001:
            found.append((after["wall"] - grew, round(grew, 2)))
        frozen = before["currentTime"] > 0 and abs(after["currentTime"] - before["currentTime"]) < 0.05
        if frozen and frozen_since is None:
            frozen_since = before["wall"]
        if frozen_since is not None and (not frozen or after is samples[-1]):
            end = after["wall"] if frozen else before["wall"]
            if end > frozen_since:
                found.append((frozen_since, round(end - frozen_since, 2)))
            frozen_since = None
    return sorted(found)


def phase_of(samples, start, end):
    return [s for s in samples if start <= s["wall"] < end]


def changes(samples, origin):
    """The rendition's changes: (seconds after ``origin``, rendition)."""
    seen: list[tuple[float, str]] = []
    for s in samples:
        if s.get("rendition") and (not seen or seen[-1][1] != s["rendition"]):
            seen.append((round(s["wall"] - origin, 1), s["rendition"]))
    return seen


def median(values):
    values = [v for v in values if v is not None and v == v]  # not NaN: dash.js before an estimate
    return round(statistics.median(values), 2) if values else None


def table(samples, origin):
    """The samples, one short line each, for a failure's message."""
    lines = ["  t(s)  rendition  kbps  media-t  latency  ahead  stalls  stalled  dash.js-kbps"]
    for s in samples:
        buffered = s.get("buffered") or []
        ahead = buffered[-1][1] - s["currentTime"] if buffered else None
        lines.append("  %5.1f  %-9s  %4s  %7.2f  %7s  %5s  %6d  %7.2f  %s" % (
            s["wall"] - origin, s.get("rendition"), (s.get("bandwidth") or 0) // 1000, s["currentTime"],
            "%.2f" % s["latency"] if s.get("latency") is not None else "-",
            "%.2f" % ahead if ahead is not None else "-", s.get("stalls", 0),
            s.get("stalledSeconds", 0), "%.0f" % s["throughput"] if s.get("throughput") else "-"))
    return "\n".join(lines)


@pytest_twisted.inlineCallbacks
def test_abr_follows_a_real_network_limit(tmp_path, request):
    if request.config.getoption("reactor", "default") == "asyncio":
        # It measures the player's ABR against the link, not the server's
        # reactor, and takes two minutes: the default-reactor pass runs it.
        pytest.skip("runs once, in the default-reactor pass of the suite")
    netlimit.require()
    env = dict(os.environ, PYTHONPATH=ROOT)
    seconds = sum(length for _, length in PHASES)
    with netlimit.LimitedLink(PHASES[0][0]) as link, \
            all_role_process(tmp_path, env=env, pop_interfaces=("127.0.0.1", link.host)) as (ports, log):
        manifest = "http://127.0.0.1:%d/live/demo/manifest.mpd" % (ports["pop"],)
        code = yield wait_for_ok(manifest, 40)
        assert code == 200, log.read_text()[-3000:]
        response = yield treq.get(manifest)
        (tmp_path / "manifest-at-launch.mpd").write_bytes((yield response.content()))
        # The viewer, in its namespace, reaches the PoP only across the link.
        url = "http://%s:%d/?v=demo" % (link.host, ports["pop"])
        launched = time.time()
        watching = run(*link.exec_args(), sys.executable, "-m", "tests.integration.browser",
                       url, seconds, tmp_path / "player.png", timeout=seconds + 120,
                       env=dict(env, FBSTREAM_BROWSER_CONSOLE=str(tmp_path / "console.log")))
        at = launched
        for i, (rate, length) in enumerate(PHASES):
            if i:
                link.limit(rate)
            at += length
            while time.time() < at and not watching.called:
                yield sleep(min(1.0, max(0.0, at - time.time())))
        out, err, code = yield watching
        qdisc = link.qdisc()
        limits = list(link.history)
        response = yield treq.get(manifest)
        (tmp_path / "manifest-at-end.mpd").write_bytes((yield response.content()))
    server_log = log.read_text()
    # An encoder behind real time (a loaded machine) makes the player ask for
    # segments before they exist: counted, to tell that from the ABR's doing.
    behind = server_log.count("transcoding is")
    assert code == 0, "the viewer failed (%d): %s" % (code, err.decode("utf-8", "replace")[-3000:])
    seen = json.loads(out.decode().strip().splitlines()[-1])
    (tmp_path / "player.json").write_text(json.dumps(seen, indent=1))
    samples, summary = seen["samples"], seen["summary"]
    top = seen.get("top") or "720p"

    # The samples in each phase, by the wall clock of the limit's changes.
    bounds = [t for t, _ in limits] + [float("inf")]
    fast, narrow, wide = (phase_of(samples, a, b) for a, b in itertools.pairwise(bounds))
    narrowed, widened = bounds[1], bounds[2]
    stalls = stalls_of(samples)
    longest = max((length for _, length in stalls), default=0.0)
    stepped_down = next((s for s in narrow if s.get("height") and s["height"] <= FITS_HEIGHT), None)
    before_up = narrow[-1].get("height") if narrow else None
    stepped_up = next((s for s in wide if s.get("height") and before_up and s["height"] > before_up), None)
    top_again = next((s for s in wide if s.get("rendition") == top), None)

    def phase_line(name, rate, part, origin):
        return "%s %d kbit/s: %s, latency p50 %s s, dash.js estimate p50 %s kbit/s" % (
            name, rate, " ".join("+%.1fs %s" % c for c in changes(part, origin)) or "no samples",
            median(s.get("latency") for s in part), median(s.get("throughput") for s in part))

    print("abr: %s | %s | %s | stalls %d (longest %.2f s, %.2f s in all) | first frame %s s | "
          "encoder behind %d times | down after %s s, up after %s s, top again after %s s | failed %d | %s" % (
              phase_line("fast", PHASES[0][0], fast, launched),
              phase_line("narrow", PHASES[1][0], narrow, narrowed),
              phase_line("wide", PHASES[2][0], wide, widened),
              summary["stalls"], longest, summary["stalled_seconds"], summary["first_frame_seconds"], behind,
              round(stepped_down["wall"] - narrowed, 1) if stepped_down else None,
              round(stepped_up["wall"] - widened, 1) if stepped_up else None,
              round(top_again["wall"] - widened, 1) if top_again else None,
              len(summary["failed"]), qdisc))

    # Every criterion at once, so one run tells the whole story.
    problems = []
    if not (fast and narrow and wide):
        problems.append("a phase has no samples")
    if not any(s.get("rendition") == top for s in fast):
        problems.append("never played the top rendition (%s) at %d kbit/s" % (top, PHASES[0][0]))
    if stepped_down is None or stepped_down["wall"] - narrowed > DOWN_WITHIN:
        problems.append("did not step down to %dp or less within %.0f s of %d kbit/s"
                        % (FITS_HEIGHT, DOWN_WITHIN, PHASES[1][0]))
    if stepped_up is None or stepped_up["wall"] - widened > UP_WITHIN:
        problems.append("did not step up within %.0f s of the limit lifting" % (UP_WITHIN,))
    if summary["failed"]:
        problems.append("%d media requests failed" % (len(summary["failed"]),))
    if summary["failed"] and behind:
        problems.append("(the encoder fell behind real time %d times: it drops frames, and a player asking "
                        "for what was dropped gets 404s; a loaded machine?)" % (behind,))
    warnings = [line for line in server_log.splitlines() if "#warn" in line or "#error" in line]
    details = "\n".join([
        "limits (s after launch, kbit/s): %s" % ([(round(t - launched, 1), r) for t, r in limits],),
        "stalls (s after launch, seconds): %s" % ([(round(t - launched, 1), n) for t, n in stalls],),
        "failed: %s" % (summary["failed"],),
        "errors: %s" % (summary["errors"],),
        "samples (s after launch):",
        table(samples, launched),
        "console:", *seen.get("console", [])[-15:],
        "server warnings:", *warnings[-20:],
    ])
    if longest > LONGEST_STALL:
        problems.append("a stall of %.2f s (at most %.1f s wanted)" % (longest, LONGEST_STALL))
    assert not problems, "; ".join(problems) + "\n" + details
