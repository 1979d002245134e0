"""
Open the PoP's page in headless Chromium (Debian's, driven by Playwright; no
browser is downloaded) and watch the player the way a viewer does: print one
JSON object with what it saw every second, every request that failed, and a
summary (stalls, seconds stalled, latency, renditions played). Run as a
separate process by the browser tests and by ``bench/playback.py``. The
first frame playing is printed at once, on a line of its own
(``{"playing": <wall clock>}``), for a test that acts on the viewer while it
watches; the result is always the last line.

    python -m tests.integration.browser URL SECONDS [SCREENSHOT]
    python -m tests.integration.browser --go-live LOGIN-LINK TITLE

With ``FBSTREAM_BROWSER_STATE=<file>`` the page starts with the local
storage kept there, and leaves its own there: a viewer coming back. With
``FBSTREAM_BROWSER_SEEK=<after>:<to>`` the viewer seeks to ``<to>`` seconds
``<after>`` seconds into the watching.

A request counts as failed if the server answered 400 or more, or if it
ended without a whole response for any reason but the player's own abort
(``net::ERR_ABORTED``: dash.js cancels a request when it abandons a segment
for another rendition or seeks; that is the player's choice, not the
server's failure). Both kinds are listed in ``failed`` and ``aborted``.
Chromium reports a fetch whose body a stream reader read to its end (how
dash.js reads a growing segment) as ``net::ERR_ABORTED`` too: the page lists
the segments dash.js read whole, and those are not counted as aborted.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from urllib.parse import urlsplit

FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    # A hidden or occluded page must not be throttled: it is watched.
    "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
]

#: One sample: the page's own stats (its currentTime read now, not at the
#: page's last half-second refresh), what the video element has buffered, and
#: the wall clock (seconds), to line samples up with what the test did.
SAMPLE = """Object.assign({}, window.fbstreamStats, {
    currentTime: document.getElementById('video').currentTime,
    buffered: Array.from({length: document.getElementById('video').buffered.length}, (_, i) =>
        [document.getElementById('video').buffered.start(i), document.getElementById('video').buffered.end(i)]),
    wall: Date.now() / 1000,
    loaded: window.fbstreamStats.loaded.splice(0),
})"""

#: Requests of media (segments, parts, init segments) and manifests.
MEDIA = (".m4s", ".mp4", ".mpd", ".m3u8")


def summarize(seen: dict) -> dict:
    """What a viewer would say of a run: stalls, time stalled, latency, renditions, failures."""
    samples = seen["samples"]
    latencies = sorted(s["latency"] for s in samples if s.get("latency") is not None)
    renditions: list[tuple[str, float]] = []
    for s in samples:
        if s.get("rendition") and (not renditions or renditions[-1][0] != s["rendition"]):
            renditions.append((s["rendition"], round(s["currentTime"], 1)))
    last = samples[-1] if samples else {}

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    return {
        "engine": last.get("engine"),
        "seconds": len(samples),
        "stalls": last.get("stalls", 0),
        "stalled_seconds": round(last.get("stalledSeconds", 0.0), 2),
        "latency_p50": round(statistics.median(latencies), 2) if latencies else None,
        "latency_p95": round(pct(0.95), 2) if latencies else None,
        "first_frame_seconds": seen.get("first_frame_seconds"),
        "renditions": renditions,
        "top_reached_at": next((t for r, t in renditions if r == seen.get("top")), None),
        "failed": [f for f in seen["failed"] if any(m in f.split("?")[0] for m in MEDIA)],
        "failed_count": seen.get("failed_count", len(seen["failed"])),
        "aborted": seen.get("aborted", []),
        "aborted_count": seen.get("aborted_count", len(seen.get("aborted", []))),
        "errors": last.get("errors", []),
        # Each stall: where the picture stopped, when, for how long, and
        # what the video element held then.
        "stall_log": last.get("stallLog", []),
    }


def watch(url: str, seconds: float, screenshot: str | None = None, console_path: str | None = None,
          playing: Callable[[], None] | None = None) -> dict:
    from playwright.sync_api import sync_playwright

    samples = []
    console: list[str] = []
    failed: list[str] = []
    aborted: list[str] = []
    loaded: set[str] = set()  # what dash.js read to the end (see the docstring)

    def request_failed(r) -> None:
        why = r.failure or ""
        entry = "%.3f %s %s" % (time.time(), why, r.url)
        (aborted if "ERR_ABORTED" in why else failed).append(entry)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=FLAGS)
        # A returning viewer: what the page kept (its local storage) from an earlier run.
        state = os.environ.get("FBSTREAM_BROWSER_STATE")
        context = browser.new_context(viewport={"width": 1280, "height": 800},
                                      storage_state=state if state and os.path.exists(state) else None)
        page = context.new_page()
        page.on("console", lambda m: console.append("%.3f %s" % (time.time(), m.text)))
        page.on("response", lambda r: failed.append("%.3f %d %s" % (time.time(), r.status, r.url))
                if r.status >= 400 else None)
        page.on("requestfailed", request_failed)
        page.goto(url)
        deadline = time.monotonic() + 30
        first_frame = None
        while time.monotonic() < deadline:
            # The first frame playing (a player's first seek moves
            # currentTime before any frame has played).
            first_frame = page.evaluate("window.fbstreamStats && window.fbstreamStats.firstFrame")
            if first_frame is not None:
                first_frame = round(first_frame, 2)
                if playing is not None:
                    playing()
                break
            time.sleep(0.1)
        # A viewer who says something (FBSTREAM_BROWSER_COMMENT): through the page's form, once playing.
        comment = os.environ.get("FBSTREAM_BROWSER_COMMENT")
        if comment and first_frame is not None:
            page.fill("#comment-text", comment)
            page.click("#comment-form button[type=submit]")
        seek = os.environ.get("FBSTREAM_BROWSER_SEEK")
        seek_after, seek_to = (float(x) for x in seek.split(":")) if seek else (-1.0, 0.0)
        began = time.monotonic()
        for i in range(int(seconds)):
            # One sample a second on the clock, however long sampling takes.
            time.sleep(max(0.0, began + i - time.monotonic()))
            if i == int(seek_after):
                page.evaluate("document.getElementById('video').currentTime = %f" % (seek_to,))
            sample = page.evaluate(SAMPLE)
            loaded.update(sample.pop("loaded", None) or ())
            samples.append(sample)
        listing = page.evaluate("Array.from(document.querySelectorAll('#videos a')).map(a => a.textContent)")
        comments = page.evaluate("Array.from(document.querySelectorAll('#comments li')).map(li => li.textContent)")
        comments_html = page.evaluate("document.getElementById('comments').innerHTML")
        stats_line = page.evaluate("document.getElementById('stats').textContent")
        top = page.evaluate("window.fbstreamStats.top")
        if screenshot:
            page.screenshot(path=screenshot)
        if state:
            context.storage_state(path=state)
        browser.close()
    aborted = [entry for entry in aborted if entry.split()[-1] not in loaded]
    if console_path:
        with open(console_path, "w") as f:
            f.write("\n".join(console) + "\n")
    # Where the media the player read came from (Content Steering moves it).
    origins: dict[str, int] = {}
    for url in loaded:
        host = urlsplit(url).netloc
        origins[host] = origins.get(host, 0) + 1
    seen = {"samples": samples, "listing": listing, "stats": stats_line, "top": top, "loaded_from": origins,
            "comments": comments, "comments_html": comments_html,
            "first_frame_seconds": first_frame, "console": console[-30:],
            "failed": failed[:50], "failed_count": len(failed),
            "aborted": aborted[:50], "aborted_count": len(aborted)}
    seen["summary"] = summarize(seen)
    return seen


def go_live(link: str, title: str) -> dict:
    """
    What a newcomer does with the link the server printed: open it, press
    *Go live*, name the video and create it. Returns what the page then
    shows (OBS's Server and Stream Key, the ffmpeg line, the watch link), the
    page's address (the login code must be gone from it), and what a second
    opening of the same link shows.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=FLAGS)
        page = browser.new_page()
        page.goto(link)
        page.click("#golive-button", timeout=20000)  # shown once the browser is signed in
        page.fill("#golive-title", title)
        page.click("#golive-form button[type=submit]")
        page.wait_for_selector("#golive-result:not([hidden])", timeout=20000)
        shown: dict[str, object] = {key: page.text_content("#golive-" + key) for key in ("server", "key", "ffmpeg")}
        shown["watch"] = page.get_attribute("#golive-watch", "href")
        shown["address"] = page.url
        other = browser.new_context().new_page()  # another browser, with no cookie
        other.goto(link)
        other.wait_for_function("document.getElementById('golive-error').textContent !== ''", timeout=20000)
        shown["second_use"] = other.text_content("#golive-error")
        shown["second_use_button_hidden"] = other.is_hidden("#golive-button")
        browser.close()
    return shown


def main(argv: list[str]) -> None:
    if argv[1] == "--go-live":
        sys.stdout.write(json.dumps(go_live(argv[2], argv[3])) + "\n")
        return
    def playing() -> None:
        sys.stdout.write(json.dumps({"playing": time.time()}) + "\n")
        sys.stdout.flush()

    seen = watch(argv[1], float(argv[2]), argv[3] if len(argv) > 3 else None,
                 os.environ.get("FBSTREAM_BROWSER_CONSOLE"), playing)
    sys.stdout.write(json.dumps(seen) + "\n")


if __name__ == "__main__":
    main(sys.argv)
