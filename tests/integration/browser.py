"""
Open the PoP's page in headless Chromium (Debian's, driven by Playwright; no
browser is downloaded) and watch the player: print one JSON line with what
it saw every second. Run as a separate process by the browser test.

    python -m tests.integration.browser URL SECONDS
"""

import json
import os
import sys
import time

from playwright.sync_api import sync_playwright

FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]

#: One sample: the page's own stats, what the video element has buffered, and
#: the wall clock (seconds), to line samples up with what the test did.
SAMPLE = """Object.assign({}, window.fbstreamStats, {
    buffered: Array.from({length: document.getElementById('video').buffered.length}, (_, i) =>
        [document.getElementById('video').buffered.start(i), document.getElementById('video').buffered.end(i)]),
    wall: Date.now() / 1000,
})"""


def main(url: str, seconds: float) -> None:
    samples = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=FLAGS)
        page = browser.new_page()
        console = []
        failed = []
        page.on("console", lambda m: console.append("%.3f %s" % (time.time(), m.text)))
        page.on("response", lambda r: failed.append("%d %s" % (r.status, r.url)) if r.status >= 400 else None)
        page.on("requestfailed", lambda r: failed.append("failed %s" % (r.url,)))
        page.goto(url)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if page.evaluate("window.fbstreamStats && window.fbstreamStats.currentTime") > 0:
                break
            time.sleep(0.25)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            samples.append(page.evaluate(SAMPLE))
            time.sleep(1)
        listing = page.evaluate("Array.from(document.querySelectorAll('#videos a')).map(a => a.textContent)")
        stats_line = page.evaluate("document.getElementById('stats').textContent")
        page.screenshot(path=sys.argv[3]) if len(sys.argv) > 3 else None
        browser.close()
    if os.environ.get("FBSTREAM_BROWSER_CONSOLE"):
        with open(os.environ["FBSTREAM_BROWSER_CONSOLE"], "w") as f:
            f.write("\n".join(console) + "\n")
    sys.stdout.write(json.dumps({"samples": samples, "listing": listing, "stats": stats_line,
                                 "console": console[-20:], "failed": failed[-20:]}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
