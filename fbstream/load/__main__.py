"""
Run one crowd of simulated viewers against a PoP, and print what they saw:

    python -m fbstream.load http://127.0.0.1:8080 --viewers 500 --seconds 20
    python -m fbstream.load http://127.0.0.1:8080 --kind ramp --viewers 2000 --seconds 120 --rise 20 --fall 20
    python -m fbstream.load http://127.0.0.1:8080 --streams a,b,c,d --zipf 1 --churn 0.01
    python -m fbstream.load http://127.0.0.1:8080 --glb http://127.0.0.1:8088 --source 127.0.1.0/24

One line of JSON per second goes to stderr, the summary to stdout (and,
with ``--json``, both to a file). ``fbstream-load`` runs the same across
many agents.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import urlsplit

import attrs

from fbstream.load.crowd import Crowd
from fbstream.load.scenario import KINDS, Scenario, ScenarioError
from fbstream.load.viewer import Settings


def scenario_arguments(parser: argparse.ArgumentParser) -> None:
    """The scenario's fields as options (shared with ``fbstream-load``)."""
    defaults = Scenario()
    parser.add_argument("--kind", choices=KINDS, default=defaults.kind)
    parser.add_argument("--viewers", type=int, default=defaults.viewers)
    parser.add_argument("--seconds", type=float, default=defaults.seconds)
    parser.add_argument("--streams", default=",".join(defaults.streams), help="stream ids, comma-separated")
    parser.add_argument("--join-over", type=float, default=defaults.join_over,
                        help="seconds over which steady or herd viewers join")
    parser.add_argument("--rise", type=float, default=defaults.rise, help="ramp: seconds up to the peak")
    parser.add_argument("--fall", type=float, default=defaults.fall, help="ramp: seconds down at the end")
    parser.add_argument("--zipf", type=float, default=defaults.zipf, help="stream popularity exponent (0: even)")
    parser.add_argument("--churn", type=float, default=defaults.churn, help="share of viewers replaced per second")
    parser.add_argument("--scale", type=float, default=defaults.scale, help="a multiple of the viewers (10: 10x)")
    parser.add_argument("--startup", type=float, default=defaults.startup, help="seconds buffered before playing")


def steering_arguments(parser: argparse.ArgumentParser) -> None:
    """Where viewers come from and who tells them where to go (shared with ``fbstream-load``)."""
    parser.add_argument("--glb", help="a global load balancer's URL: each viewer asks its /v1/map first "
                        "and plays from the first PoP it names (the PoP given is the fallback)")
    parser.add_argument("--source", action="append", default=[], metavar="CIDR",
                        help="a client network viewers come from, e.g. 127.0.1.0/24 (repeatable: the networks "
                        "in turn); the addresses must be this host's (all of 127/8 is, on Linux)")


def scenario_of(args: argparse.Namespace) -> Scenario:
    scenario = Scenario(kind=args.kind, viewers=args.viewers, seconds=args.seconds,
                        streams=tuple(s for s in args.streams.split(",") if s), join_over=args.join_over,
                        rise=args.rise, fall=args.fall, zipf=args.zipf, churn=args.churn, scale=args.scale,
                        startup=args.startup)
    scenario.check()
    return scenario


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fbstream.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("pop", help="the PoP's viewers' URL, http://HOST:PORT")
    scenario_arguments(parser)
    steering_arguments(parser)
    parser.add_argument("--json", help="write the summary and every second's figures here")
    args = parser.parse_args(argv)
    url = urlsplit(args.pop)
    if url.scheme != "http" or not url.hostname:
        parser.error("an http:// URL, please")
    try:
        scenario = scenario_of(args)
    except ScenarioError as e:
        parser.error(str(e))

    from twisted.internet import reactor

    run: Any = reactor
    try:
        crowd = Crowd(run, url.hostname, url.port or 80, Settings(startup=scenario.startup), glb=args.glb,
                      sources=args.source)
    except ValueError as e:
        parser.error(str(e))
    result: dict[str, Any] = {}
    crowd.run(scenario).addCallback(result.update).addBoth(lambda _: run.stop())
    run.run()
    for line in crowd.seconds:
        print(json.dumps(line), file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"scenario": attrs.asdict(scenario), "summary": result, "seconds": crowd.seconds}, f, indent=1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
