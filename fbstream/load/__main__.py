"""
Run a crowd of simulated viewers against one stream, and print what they saw:

    python -m fbstream.load http://127.0.0.1:8080/live/demo/manifest.mpd --viewers 500 --seconds 20

They join over ``--join-over`` seconds (0: all at once, a herd), watch, and
leave at the end. The summary is JSON on the last line (``--json`` writes it,
with every second's line, to a file too).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import urlsplit

from fbstream.load.crowd import Crowd
from fbstream.load.viewer import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fbstream.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", help="the stream's DASH manifest URL at the PoP")
    parser.add_argument("--viewers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30.0, help="from the first viewer's join to the end")
    parser.add_argument("--join-over", type=float, default=5.0, help="seconds over which the viewers join")
    parser.add_argument("--startup", type=float, default=Settings().startup, help="seconds buffered before playing")
    parser.add_argument("--json", help="write the summary and every second's figures here")
    args = parser.parse_args(argv)
    url = urlsplit(args.manifest)
    if url.scheme != "http" or not url.hostname:
        parser.error("an http:// manifest URL, please")

    from twisted.internet import reactor

    run: Any = reactor
    crowd = Crowd(run, url.hostname, url.port or 80, url.path, Settings(startup=args.startup))
    crowd.start()
    step = args.join_over / args.viewers if args.viewers and args.join_over > 0 else 0.0
    for i in range(args.viewers):
        run.callLater(i * step, crowd.join, 1)
    result: dict[str, Any] = {}

    def finish() -> None:
        result.update(crowd.summary())
        crowd.stop()
        run.stop()

    run.callLater(args.seconds, finish)
    run.run()
    for line in crowd.seconds:
        print(json.dumps(line), file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": result, "seconds": crowd.seconds}, f, indent=1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
