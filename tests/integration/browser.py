"""
Open the PoP's page in headless Chromium (Debian's, driven by Playwright; no
browser is downloaded) and watch the player: print one JSON line with what
it saw every second. Run as a separate process by the browser test.

    python -m tests.integration.browser URL SECONDS
"""

import json
import sys
import time

from playwright.sync_api import sync_playwright

FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]


def main(url: str, seconds: float) -> None:
    samples = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=FLAGS)
        page = browser.new_page()
        console = []
        page.on("console", lambda m: console.append(m.text))
        page.goto(url)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if page.evaluate("window.fbstreamStats && window.fbstreamStats.currentTime") > 0:
                break
            time.sleep(0.25)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            samples.append(page.evaluate("Object.assign({}, window.fbstreamStats)"))
            time.sleep(1)
        listing = page.evaluate("Array.from(document.querySelectorAll('#videos a')).map(a => a.textContent)")
        stats_line = page.evaluate("document.getElementById('stats').textContent")
        page.screenshot(path=sys.argv[3]) if len(sys.argv) > 3 else None
        browser.close()
    sys.stdout.write(json.dumps({"samples": samples, "listing": listing, "stats": stats_line,
                                 "console": console[-20:]}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
