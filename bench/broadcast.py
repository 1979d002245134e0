"""
Two figures of ``fbstream-broadcast`` and the comments that flow back to it.

**The upload's fit to a link that changes**, simulated
(:mod:`fbstream.broadcast.simulate`): a link of 4 Mbit/s, then 1 Mbit/s,
then 4 Mbit/s (and a second profile that falls to 300 kbit/s, under the
video floor), a 20 ms way, Linux's 512 KB socket buffer, a 2 Mbit/s top
bitrate with 64 kbit/s of audio. Per step of the limit, for our
:class:`~fbstream.broadcast.rate.UploadRate` and for OBS's dynamic bitrate
with its constants (``DBR_INC_TIMER`` of 4 s, as in OBS 30, and of 30 s, as
before): how long until the bitrate fit the link (a step down) or came back
to 90 % of what fits (a step up), how far and how long it went past the
link afterwards, the worst delay the queue added, and the share of the link
used. The same steps on a real link (a ``tbf`` in a network namespace) are
``tests/integration/test_broadcast.py``, which prints its figures.

**Comment delivery**, for real: the ``all`` role with its demo and a second
PoP on its origin; comments posted at the first PoP (from many addresses, as
viewers), read at the second the way the page reads them (each second's
document, held by the encoder until it is out), from the post to the
reader: p50, p90, p99 and the worst.

    python bench/broadcast.py            (60 s of comments, 4 a second)
    python bench/broadcast.py --smoke    (CI: 8 s of them)

The exit status is non-zero only if the bench itself broke, never on a figure.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from fbstream.broadcast import simulate  # noqa: E402

PROFILES = {
    "4 -> 1 -> 4 Mbit/s": [(0, 4_000_000), (30, 1_000_000), (90, 4_000_000)],
    "4 -> 0.3 -> 4 Mbit/s": [(0, 4_000_000), (30, 300_000), (90, 4_000_000)],
}
CONTROLLERS = (("fbstream", "ours", None), ("OBS (4 s)", "obs", 4.0), ("OBS (30 s)", "obs", 30.0))
MAXIMUM = 2_000_000


def upload(duration_after: float) -> None:
    print("The upload on a simulated link (2 Mbit/s top, 64 kbit/s audio, 512 KB socket buffer, 20 ms way)")
    print("%-22s %-13s %-10s %10s %10s %8s %10s %6s" % (
        "profile", "step", "who", "converged", "overshoot", "over", "worst", "used"))
    for name, steps in PROFILES.items():
        for label, kind, timer in CONTROLLERS:
            samples = simulate.run(kind, steps, steps[-1][0] + duration_after, maximum=MAXIMUM, obs_inc_timer=timer)
            for figures in simulate.figures(samples, steps, maximum=MAXIMUM):
                print("%-22s %-13s %-10s %10s %7d kb %6.1f s %8.2f s %6.2f" % (
                    name, "to %g Mbit/s" % (figures.link / 1e6), label,
                    "never" if figures.converged is None else "%.1f s" % (figures.converged,),
                    figures.overshoot_kbps, figures.seconds_over, figures.worst_delay, figures.used))
    print("converged: until the bitrate fit (down) or reached 90 % of what fits (up); overshoot and over: how far "
          "and how long past the link after that; worst: the queue's added delay; used: the link's share carried")


def post(port: int, source: str, text: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        connection.request("POST", "/api/v1/live_videos/demo/comments", json.dumps({"name": "bench", "text": text}))
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def comments(seconds: float, rate: float) -> None:
    import tempfile
    from pathlib import Path

    from tests.integration.test_push import ok_within
    from tests.integration.test_twistd import all_role_process
    from tests.integration.topology import Node, origin_pop_args

    work = Path(tempfile.mkdtemp(prefix="bench-broadcast-"))
    pop2 = Node("pop2", "pop", [], str(work))
    latencies: list[float] = []
    refused: dict[int, int] = {}
    try:
        with all_role_process(work) as (ports, log):
            pop2.args = origin_pop_args("pop2", ports["origin"])
            pop2.start()
            for port in (ports["pop"], pop2.http):
                if ok_within("http://127.0.0.1:%d/live/demo/manifest.mpd" % (port,), 60) != 200:
                    raise SystemExit("the demo did not start; see %s" % (log,))
            sent: dict[str, float] = {}
            done = threading.Event()

            def read() -> None:
                n = math.floor(time.time()) - 2
                reader = http.client.HTTPConnection("127.0.0.1", pop2.http, timeout=10)
                while not done.is_set():
                    reader.request("GET", "/live/demo/comments/%d.json" % (n,))
                    response = reader.getresponse()
                    body = response.read()
                    now = time.time()
                    if response.status == 200:
                        for comment in json.loads(body).get("comments", []):
                            at = sent.get(comment.get("text", ""))
                            if at is not None:
                                latencies.append(now - at)
                        n += 1
                    else:
                        time.sleep(0.2)
                        if n < math.floor(now) - 3:
                            n = math.floor(now) - 2

            reading = threading.Thread(target=read, daemon=True)
            reading.start()
            time.sleep(2)
            began = time.time()
            i = 0
            while time.time() < began + seconds:
                text = "comment %d" % (i,)
                sent[text] = time.time()
                status = post(ports["pop"], "127.0.0.%d" % (10 + i % 200,), text)
                if status != 202:
                    refused[status] = refused.get(status, 0) + 1
                i += 1
                time.sleep(max(0.0, began + i / rate - time.time()))
            time.sleep(4)
            done.set()
            reading.join(15)
    finally:
        pop2.kill()
    latencies.sort()

    def pct(p: float) -> str:
        return "%.0f ms" % (latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000,) if latencies else "-"

    print("Comment delivery, posted at one PoP, read at another the page's way: %d posted, %d read, %s refused | "
          "p50 %s  p90 %s  p99 %s  worst %s" % (i, len(latencies), refused or "none", pct(0.5), pct(0.9), pct(0.99),
                                                pct(1.0)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a short run, for CI")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of comments")
    parser.add_argument("--rate", type=float, default=4.0, help="comments a second")
    args = parser.parse_args()
    upload(30.0 if args.smoke else 40.0)
    comments(8.0 if args.smoke else args.seconds, args.rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
