"""
The global load balancer's decisions, simulated: many PoPs, many client
networks, a viral video's watermelon curve, and the balancer's own code
(:class:`fbstream.glb.balance.Balancer`) deciding once a second on what it
is told late.

The world: PoPs and client networks on a 4,000 km square; a network's
round-trip time to a PoP is 5 ms plus 1 ms per 100 km (light in fibre, both
ways, and some). Background viewers everywhere (``--background`` of them,
each leaving at a rate of one in 600 a second and replaced), and a viral
video watched mostly near one hotspot: ``--peak`` viewers after a rise of
``--rise`` seconds, a hold, then the drop when the video ends (``--fall``
seconds). Each PoP's capacity is its share of the background with room to
spare, and all PoPs together hold the peak with 25 % to spare; the ones near
the hotspot cannot hold it alone.

Each second each PoP reports its viewers (``--noise`` of jitter); the
balancer sees a report ``--measure`` seconds after it was taken, plans on it,
and its plan steers new viewers ``--react`` seconds after that (the map
reaching players). Viewers already watching stay where they are. Each
predictor runs the same world:

- ``reactive``: plans on the last report as it is;
- ``linear``: that plus the window's slope times the horizon;
- ``spline``: the cubic spline of :mod:`fbstream.glb.predict`, clamped.

For each it prints the PoP-seconds over capacity and over the headroom the
plan aims under (half a point of slack), the peak overshoot above a PoP's
capacity (negative: the most any PoP reached stayed under it), the extra latency viewers paid over their nearest PoP
(viewer-weighted, ms), how often a network's main PoP (one taking at least two thirds of its new
viewers) went back to the one it had left within 10 s (swings), and
the solve time; and it draws each run's hottest PoPs' load against capacity.

    python bench/glb_sim.py                 (about a minute: 800,000 viewers)
    python bench/glb_sim.py --smoke         (CI: a small world, 90 s)

Needs numpy and scipy (installed with fbstream) and matplotlib for the plot
(the ``load`` extra); without matplotlib it prints the figures only.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from fbstream.glb.balance import Balancer, Plan, place  # noqa: E402
from fbstream.glb.predict import PREDICTORS  # noqa: E402

CHURN = 1 / 600.0


def build_world(args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
    side = 4000.0
    pops = rng.uniform(0, side, size=(args.pops, 2))
    nets = rng.uniform(0, side, size=(args.networks, 2))
    distance = np.linalg.norm(nets[:, None, :] - pops[None, :, :], axis=2)
    rtt = 5.0 + distance / 100.0
    hotspot = pops[0] + rng.normal(0, 150, size=2)
    near = np.linalg.norm(nets - hotspot, axis=1)
    viral = np.exp(-near / 600.0) * rng.lognormal(0, 0.5, args.networks)
    viral /= viral.sum()
    background = rng.lognormal(0, 0.7, args.networks)
    background *= args.background / background.sum()
    nearest = rtt.argmin(axis=1)
    share = np.bincount(nearest, weights=background, minlength=args.pops)
    capacity = 1.5 * share + 0.02 * args.background
    # All PoPs together hold the peak and the background with 25 % to spare.
    capacity *= 1.25 * (args.peak + args.background) / capacity.sum()
    return {"rtt": rtt, "viral": viral, "background": background, "capacity": capacity,
            "names": ["pop%02d" % (i,) for i in range(args.pops)],
            "nets": ["10.%d.%d.0/24" % (i // 256, i % 256) for i in range(args.networks)]}


def curve(t: float, args: argparse.Namespace) -> float:
    """The viral video's viewers at ``t``: the watermelon."""
    hold_end = args.rise + args.hold
    if t < 0:
        return 0.0
    if t < args.rise:
        x = t / args.rise
        return args.peak * x * x * (3 - 2 * x)  # a steep S: slow, then steep, then levelling
    if t < hold_end:
        return args.peak
    if t < hold_end + args.fall:
        return args.peak * (1 - (t - hold_end) / args.fall)
    return 0.0


def first_pop(balancer: Balancer, alive: list[str], full: frozenset[str], network: str, nearest: str) -> str:
    """The first PoP of ``network``'s map (the plan's full PoPs last); its nearest with none alive."""
    return balancer.ranked(network, alive, full)[0] if alive else nearest


def run(kind: str, args: argparse.Namespace, world: dict[str, Any]) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed + 1)
    rtt, capacity, names, nets = world["rtt"], world["capacity"], world["names"], world["nets"]
    n_net, n_pop = rtt.shape
    best = rtt.min(axis=1)
    balancer = Balancer(predictor=kind, lead=args.react, interval=1.0, window=args.window, headroom=args.headroom,
                        down_after=args.measure + 3.0, hysteresis_ms=args.hysteresis)
    for n, net in enumerate(nets):
        for p, pop in enumerate(names):
            balancer.measured(net, pop, float(rtt[n, p]))
    viewers = np.zeros((n_net, n_pop))
    # Start with the background where the balancer would put it: the nearest PoP.
    viewers[np.arange(n_net), rtt.argmin(axis=1)] = world["background"]
    reports: list[tuple[float, np.ndarray]] = []
    plans: list[tuple[float, Plan]] = []
    # The plan steering arrivals now, and what of it they have taken.
    in_effect: Plan = Plan()
    spent: dict[str, dict[str, float]] = {}
    index = {pop: p for p, pop in enumerate(names)}
    seconds = int(args.rise + args.hold + args.fall + args.tail)
    loads = np.zeros((seconds, n_pop))
    over_seconds = 0
    over_headroom = 0
    peak_over = -1.0
    extra_ms = 0.0
    viewer_seconds = 0.0
    #: network -> (main PoP, the one before, when it changed)
    primary: dict[str, tuple[str, str | None, float]] = {}
    swings = 0
    solve_times = []
    for t in range(seconds):
        target = world["background"] + world["viral"] * curve(t, args)
        have = viewers.sum(axis=1)
        # Departures: churn, and everyone above the target when the video ends.
        leaving = np.maximum(have * CHURN, have - target)
        keep = np.where(have > 0, 1 - leaving / np.maximum(have, 1e-9), 0.0)
        viewers *= keep[:, None]
        arrivals = np.maximum(0.0, target - viewers.sum(axis=1))
        # Plans reach players args.react seconds after they are made.
        while plans and plans[0][0] <= t:
            in_effect, spent = plans.pop(0)[1], {}
        alive = balancer.alive(t - args.measure)
        for n in range(n_net):
            if arrivals[n] <= 0:
                continue
            first = functools.partial(first_pop, balancer, alive, in_effect.full, nets[n],
                                      names[int(rtt[n].argmin())])
            for pop, count in place(in_effect, spent, nets[n], float(arrivals[n]), first).items():
                viewers[n, index[pop]] += count
        load = viewers.sum(axis=0)
        loads[t] = load
        ratio = load / capacity
        over_seconds += int((ratio > 1.0).sum())
        over_headroom += int((ratio > args.headroom + 0.005).sum())
        peak_over = max(peak_over, float(ratio.max()) - 1.0)
        extra_ms += float((viewers * (rtt - best[:, None])).sum())
        viewer_seconds += float(viewers.sum())
        noisy = viewers * (1 + args.noise * rng.standard_normal(viewers.shape))
        reports.append((float(t), np.maximum(noisy, 0)))
        # The balancer learns of reports args.measure seconds late, and
        # decides each second once it has any.
        taken_any = False
        while reports and reports[0][0] <= t - args.measure:
            taken, seen = reports.pop(0)
            taken_any = True
            for p, pop in enumerate(names):
                column = seen[:, p]
                nonzero = np.nonzero(column > 0.5)[0]
                balancer.report(taken, pop, float(capacity[p]), float(column.sum()),
                                {nets[n]: float(column[n]) for n in nonzero})
        if taken_any:
            started = time.perf_counter()
            plan = balancer.decide(float(t))
            solve_times.append(time.perf_counter() - started)
            for network, shares in plan.shares.items():
                if shares[0][1] < 2 / 3:
                    continue  # no clear main PoP
                main = shares[0][0]
                was = primary.get(network)
                if was is not None and was[0] != main:
                    # Back to the main PoP it left within 10 s: a swing.
                    if was[1] == main and t - was[2] <= 10:
                        swings += 1
                    primary[network] = (main, was[0], float(t))
                elif was is None:
                    primary[network] = (main, None, -math.inf)
            plans.append((t + args.react, plan))
    return {
        "kind": kind, "loads": loads, "over_seconds": over_seconds, "over_headroom": over_headroom,
        "peak_over": peak_over,
        "extra_ms": extra_ms / max(viewer_seconds, 1.0), "swings": swings,
        "solve_p50": float(np.median(solve_times)) if solve_times else 0.0,
        "solve_max": max(solve_times, default=0.0),
    }


def plot(results: list[dict[str, Any]], world: dict[str, Any], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    capacity = world["capacity"]
    hottest = np.argsort(-(results[0]["loads"] / capacity).max(axis=0))[:4]
    fig, axes = plt.subplots(len(results), 1, figsize=(10, 3.2 * len(results)), sharex=True, squeeze=False)
    for ax, result in zip(axes[:, 0], results):
        for p in hottest:
            ax.plot(100 * result["loads"][:, p] / capacity[p], label=world["names"][p])
        ax.axhline(100, color="red", linewidth=0.8)
        ax.set_ylabel("load, % of capacity")
        ax.set_title("%s: %d PoP-s over capacity, peak %+.1f %%, +%.1f ms" % (
            result["kind"], result["over_seconds"], 100 * result["peak_over"], result["extra_ms"]))
        ax.legend(loc="upper left", fontsize=8)
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pops", type=int, default=16)
    parser.add_argument("--networks", type=int, default=400)
    parser.add_argument("--peak", type=float, default=800_000)
    parser.add_argument("--background", type=float, default=400_000)
    parser.add_argument("--rise", type=float, default=180.0, help="seconds to the peak")
    parser.add_argument("--hold", type=float, default=180.0)
    parser.add_argument("--fall", type=float, default=30.0)
    parser.add_argument("--tail", type=float, default=30.0)
    parser.add_argument("--measure", type=float, default=3.0, help="seconds a report takes to reach the balancer")
    parser.add_argument("--react", type=float, default=2.0, help="seconds a new map takes to steer viewers")
    parser.add_argument("--window", type=float, default=3.0, help="seconds of reports the predictor fits")
    parser.add_argument("--headroom", type=float, default=0.9)
    parser.add_argument("--hysteresis", type=float, default=10.0, help="ms a network's main PoP is favoured by")
    parser.add_argument("--noise", type=float, default=0.005, help="relative jitter of each report")
    parser.add_argument("--predictors", default=",".join(PREDICTORS))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default="glb_sim.png", help="the plot's path")
    parser.add_argument("--smoke", action="store_true", help="a small world, briefly (CI)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.pops, args.networks, args.peak, args.background = 6, 60, 80_000, 40_000
        args.rise, args.hold, args.fall, args.tail = 40.0, 20.0, 15.0, 15.0
        args.out = os.path.join(os.environ.get("TMPDIR", "/tmp"), "glb_sim_smoke.png")
    world = build_world(args, np.random.default_rng(args.seed))
    print("%d PoPs, %d networks; peak %d viral + %d background viewers; capacity %d in all; "
          "reports %.0f s late, maps %.0f s to act, horizon %.0f s, headroom %.0f %%"
          % (args.pops, args.networks, args.peak, args.background, world["capacity"].sum(), args.measure,
             args.react, args.measure + args.react + 1, 100 * args.headroom))
    results = []
    print("%-9s %12s %12s %14s %14s %8s %16s" % ("predictor", "PoP-s over", "over headroom", "peak overshoot",
                                                  "extra latency", "swings", "solve p50/max"))
    for kind in args.predictors.split(","):
        result = run(kind, args, world)
        results.append(result)
        print("%-9s %12d %12d %13.1f%% %11.2f ms %8d %9.1f/%.1f ms" % (
            kind, result["over_seconds"], result["over_headroom"], 100 * result["peak_over"], result["extra_ms"],
            result["swings"],
            1000 * result["solve_p50"], 1000 * result["solve_max"]))
    if plot(results, world, args.out):
        print("plot: %s" % (os.path.abspath(args.out),))
    return 0


if __name__ == "__main__":
    sys.exit(main())
