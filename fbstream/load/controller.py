"""
``fbstream-load``: drive one or many load-generating agents
(``twistd fbstream --role=loadgen``) through one scenario, and report.

    fbstream-load --agent http://10.0.0.5:8090 --agent http://10.0.1.5:8090 \\
        --pop http://pop1:8080 --kind ramp --viewers 20000 --seconds 300 \\
        --metrics pop=http://pop1:8080/metrics --metrics origin=http://dc:8083/metrics \\
        --report report/

It starts the scenario on every agent at one moment (a couple of seconds
ahead, each agent its share of the viewers), prints a line a second while it
runs, scrapes each role's ``/metrics`` every second, and at the end collects
every agent's figures and writes ``report.json`` and ``report.html`` (with
plots: viewers, latency and time to first byte, stalls, requests and leak
per tier, the PoP's CPU).

Per tier it reports requests, hits, coalesced waiters, upstream fetches and
the leak ratio over the run, from the ``fbstream_cache_*`` counters, with
``--metrics NAME=URL`` naming each role. The leak is the segments' (their
upstream fetches over their requests), the one Facebook measured; manifests
and playlists, fetched again as they change, have their own.

This is a console script, not a role: it runs no reactor (it waits with
``time.sleep`` and asks the agents with ``urllib``), and what it prints on
stdout is its output to the person running the test.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import os
import re
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fbstream.load.__main__ import scenario_arguments, scenario_of, steering_arguments
from fbstream.load.crowd import Histogram
from fbstream.load.scenario import ScenarioError

#: The cache counters each tier is reported by.
COUNTERS = {
    "requests": "fbstream_cache_requests_total",
    "hits": "fbstream_cache_hits_total",
    "coalesced": "fbstream_cache_coalesced_waiters_total",
    "upstream": "fbstream_cache_upstream_fetches_total",
    "manifest_requests": "fbstream_cache_manifest_requests_total",
    "manifest_fetches": "fbstream_cache_manifest_fetches_total",
}
_SAMPLE = re.compile(r'^(\w+)(?:\{([^}]*)\})? ([0-9.eE+-]+|NaN)$', re.M)


class Agent:
    def __init__(self, url: str, secret: str | None) -> None:
        self.url = url.rstrip("/") + "/v1/run"
        self.secret = secret
        self.seen = 0
        self.last: dict[str, Any] = {}

    def call(self, method: str, body: dict[str, Any] | None = None, query: str = "") -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + query, data=data, method=method)
        request.add_header("content-type", "application/json")
        if self.secret:
            request.add_header("authorization", "Bearer " + self.secret)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as e:
            raise RuntimeError("%s: %d %s" % (self.url, e.code, e.read().decode(errors="replace").strip())) from None

    def poll(self) -> list[dict[str, Any]]:
        """The lines it has made since the last poll."""
        self.last = self.call("GET", query="?from=%d" % (self.seen,))
        lines = list(self.last.get("seconds", []))
        self.seen += len(lines)
        return lines


def scrape(url: str) -> dict[str, float]:
    """A role's /metrics, summed per metric and tier: {"name|tier": value}."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode(errors="replace")
    except (OSError, urllib.error.URLError):
        return {}
    found: dict[str, float] = {}
    for name, labels, value in _SAMPLE.findall(text):
        tier = re.search(r'tier="([^"]*)"', labels or "")
        key = "%s|%s" % (name, tier.group(1) if tier else "")
        if value != "NaN":
            found[key] = found.get(key, 0.0) + float(value)
    return found


def tiers_of(before: dict[str, float], after: dict[str, float]) -> dict[str, dict[str, float]]:
    """Per cache tier, each counter's growth between two scrapes, and the leak ratio."""
    tiers: dict[str, dict[str, float]] = {}
    for key, value in after.items():
        name, _, tier = key.partition("|")
        for label, metric in COUNTERS.items():
            if name == metric and tier:
                tiers.setdefault(tier, {})[label] = value - before.get(key, 0.0)
    for figures in tiers.values():
        # The leak Facebook measured is the segments': a manifest changes
        # every second, and a PoP's proxy layers ask its cache layer for it
        # each time a viewer does (coalesced only while a fetch is out), so
        # it has a ratio of its own.
        manifests = figures.get("manifest_requests", 0.0)
        segments = figures.get("requests", 0.0) - manifests
        figures["leak"] = _ratio(figures.get("upstream", 0.0) - figures.get("manifest_fetches", 0.0), segments)
        figures["manifest_leak"] = _ratio(figures.get("manifest_fetches", 0.0), manifests)
    return tiers


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole > 0 else float("nan")


#: The CPU a role's /metrics counts: its process's, and its PoP workers'.
CPU_COUNTERS = ("process_cpu_seconds_total|", "fbstream_pop_worker_cpu_seconds_total|")


def cpu_seconds(after: dict[str, float], before: dict[str, float]) -> float:
    """CPU seconds a role used between two scrapes (its process and its workers)."""
    return sum(after.get(key, 0.0) - before.get(key, 0.0) for key in CPU_COUNTERS)


def merge_histograms(results: list[dict[str, Any]], name: str) -> Histogram:
    merged = Histogram()
    for result in results:
        for index, count in (result.get("histograms", {}).get(name) or {}).items():
            merged.counts[int(index)] = merged.counts.get(int(index), 0) + int(count)
            merged.n += int(count)
    return merged


def combine(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Every agent's summary as one: counts added, percentiles from the merged histograms."""
    summaries = [r.get("summary") or {} for r in results]
    total: dict[str, Any] = {"agents": len(results)}
    for field in ("viewers", "requests", "bytes", "started", "stalls", "stalled_seconds", "cpu_saturated_seconds",
                  "redirects", "map_failures"):
        total[field] = sum(s.get(field) or 0 for s in summaries)
    for field in ("errors", "sent_to", "watching_at"):
        added: dict[str, int] = {}
        for s in summaries:
            for what, n in (s.get(field) or {}).items():
                added[what] = added.get(what, 0) + n
        total[field] = added
    played, stalled = sum(s.get("played_seconds") or 0 for s in summaries), total["stalled_seconds"]
    total["played_seconds"] = round(played, 2)
    total["rebuffer_ratio"] = round(stalled / (played + stalled), 5) if played + stalled else None
    for name, label, qs in (("ttfb", "ttfb", (0.5, 0.9, 0.99)), ("latency", "latency", (0.5, 0.95)),
                            ("startup", "startup", (0.5, 0.9))):
        histogram = merge_histograms(results, name)
        for q in qs:
            value = histogram.quantile(q)
            total["%s_p%d" % (label, round(q * 100))] = round(value, 4) if value is not None else None
    renditions: dict[str, float] = {}
    for s in summaries:
        weight = (s.get("viewers") or 0) / max(1, total["viewers"])
        for name, share in (s.get("renditions") or {}).items():
            renditions[name] = round(renditions.get(name, 0.0) + share * weight, 3)
    total["renditions"] = renditions
    # Agents ask for the same objects: the most any one asked for is the
    # least there were (with one agent, the number).
    total["distinct_paths"] = max((s.get("distinct_paths") or 0 for s in summaries), default=0)
    return total


def run(args: argparse.Namespace) -> dict[str, Any]:
    scenario = scenario_of(args)
    secret = None
    if args.secret_file:
        with open(args.secret_file) as f:
            secret = f.read().strip()
    secret = secret or os.environ.get("FBSTREAM_LOAD_SECRET") or None
    agents = [Agent(url, secret) for url in args.agent]
    metrics = dict(spec.split("=", 1) for spec in args.metrics)
    start_at = time.time() + args.lead
    for i, agent in enumerate(agents):
        agent.call("POST", {"pop": args.pop, "scenario": scenario.to_json(), "start_at": start_at,
                            "share": [i, len(agents)], "seed": args.seed, "glb": args.glb,
                            "sources": args.source})
    print("fbstream-load: %s, %d viewers x %g over %g s on %d agent(s), from %s" % (
        scenario.kind, scenario.viewers, scenario.scale, scenario.seconds, len(agents),
        time.strftime("%H:%M:%S", time.localtime(start_at))), flush=True)
    timeline: list[dict[str, Any]] = []
    #: (seconds since the start, each role's tiers' figures that second, each role's CPU in cores)
    scrapes: list[tuple[float, dict[str, Any], dict[str, float]]] = []
    pool = ThreadPoolExecutor(max(1, len(agents) + len(metrics)))
    first = {name: scrape(url) for name, url in metrics.items()}
    previous = dict(first)
    previous_at = {name: time.time() for name in metrics}
    deadline = start_at + scenario.seconds + args.lead + 30
    printed_t = -1.0  # the newest agent second printed (an agent with no new one prints nothing)
    while True:
        time.sleep(max(0.0, 1.0 - (time.time() % 1.0)))
        lines = list(pool.map(Agent.poll, agents))
        scraped = dict(zip(metrics, pool.map(scrape, metrics.values())))
        now = time.time()
        tiers: dict[str, Any] = {}
        cores: dict[str, float] = {}
        for name, values in scraped.items():
            if values:
                tiers[name] = tiers_of(previous[name], values)
                cores[name] = round(cpu_seconds(values, previous[name]) / max(1e-3, now - previous_at[name]), 3)
                previous[name], previous_at[name] = values, now
        for agent_lines in lines:
            for line in agent_lines:
                timeline.append(line)
        scrapes.append((now - start_at, tiers, cores))
        states = [agent.last.get("state") for agent in agents]
        newest = [agent.last.get("seconds", [{}])[-1] if agent.last.get("seconds") else {} for agent in agents]
        newest_t = max((n.get("t", -1.0) for n in newest), default=-1.0)
        if any(newest) and newest_t != printed_t:
            printed_t = newest_t
            print("t %5.0f s  viewers %6d  playing %6d  stalled %5d  req/s %6d  ttfb p50 %s  agents' CPU %s" % (
                now - start_at, sum(n.get("viewers", 0) for n in newest), sum(n.get("playing", 0) for n in newest),
                sum(n.get("stalled", 0) for n in newest), sum(n.get("requests", 0) for n in newest),
                _ms(max((n.get("ttfb_p50") or 0) for n in newest)),
                "/".join("%.0f%%" % (100 * n.get("cpu", 0)) for n in newest)), flush=True)
        if all(state in ("done", "idle") for state in states) and now > start_at:
            break
        if now > deadline:
            for agent in agents:
                agent.call("DELETE")
    results = [agent.call("GET", query="?from=0") for agent in agents]
    pool.shutdown()
    last = {name: scrape(url) for name, url in metrics.items()}
    report = {
        "scenario": scenario.to_json(), "pop": args.pop, "agents": [a.url for a in agents],
        "summary": combine(results),
        "tiers": {name: tiers_of(first[name], values) for name, values in last.items() if values},
        "seconds": _by_second(results),
        "scrapes": scrapes,
        "per_agent": [{"agent": r.get("agent"), "summary": r.get("summary")} for r in results],
    }
    return report


def _by_second(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every agent's lines, second by second, added (and the worst percentiles)."""
    merged: dict[int, dict[str, Any]] = {}
    for result in results:
        for line in result.get("seconds", []):
            second = round(line["t"])
            at = merged.setdefault(second, {"t": second})
            for field in ("viewers", "playing", "stalled", "starting", "requests"):
                at[field] = at.get(field, 0) + line.get(field, 0)
            for field in ("ttfb_p50", "ttfb_p99", "latency_p50", "latency_p90", "cpu"):
                if line.get(field) is not None:
                    at[field] = max(at.get(field) or 0, line[field])
    return [merged[t] for t in sorted(merged)]


def _ms(seconds: float) -> str:
    return "%.0f ms" % (1000 * seconds)


def write_report(report: dict[str, Any], directory: str) -> tuple[str, str]:
    os.makedirs(directory, exist_ok=True)
    json_path = os.path.join(directory, "report.json")
    with open(json_path, "w") as f:
        json.dump(report, f, indent=1, default=lambda v: None)
    html_path = os.path.join(directory, "report.html")
    with open(html_path, "w") as f:
        f.write(render_html(report))
    return json_path, html_path


def _plots(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(title, PNG as base64) of each plot; none without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    seconds = report["seconds"]
    t = [s["t"] for s in seconds]
    plots = []

    def figure(title: str, series: list[tuple[str, list[Any]]], ylabel: str, xs: list[float] | None = None) -> None:
        fig, ax = plt.subplots(figsize=(9, 3))
        for label, values in series:
            ax.plot(xs if xs is not None else t, [math.nan if v is None else v for v in values], label=label)
        ax.set_xlabel("seconds")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize="small")
        ax.set_title(title)
        out = io.BytesIO()
        fig.tight_layout()
        fig.savefig(out, format="png", dpi=80)
        plt.close(fig)
        plots.append((title, base64.b64encode(out.getvalue()).decode()))

    figure("Viewers", [("watching", [s.get("viewers") for s in seconds]),
                       ("playing", [s.get("playing") for s in seconds]),
                       ("stalled", [s.get("stalled") for s in seconds])], "viewers")
    figure("Live latency and time to first byte (per second, worst agent)",
           [("latency p50", [s.get("latency_p50") for s in seconds]),
            ("TTFB p50", [s.get("ttfb_p50") for s in seconds]),
            ("TTFB p99", [s.get("ttfb_p99") for s in seconds])], "seconds")
    figure("Stalls", [("viewers stalled", [s.get("stalled") for s in seconds]),
                      ("viewers starting (buffering their first seconds)", [s.get("starting") for s in seconds])],
           "viewers")
    scrapes = [entry if len(entry) == 3 else (*entry, {}) for entry in report.get("scrapes") or []]
    xs = [entry[0] for entry in scrapes]
    series, leaks = [], []
    for role in sorted({name for _, tiers, _ in scrapes for name in tiers}):
        for tier in sorted({tier for _, tiers, _ in scrapes for tier in tiers.get(role, {})}):
            figures = [tiers.get(role, {}).get(tier, {}) for _, tiers, _ in scrapes]
            series.append(("%s requests/s" % (tier,), [f.get("requests") for f in figures]))
            series.append(("%s upstream/s" % (tier,), [f.get("upstream") for f in figures]))
            leaks.append(("%s segment leak" % (tier,), [f.get("leak") for f in figures]))
    if series:
        figure("Requests and upstream fetches per tier", series, "per second", xs)
        figure("Segment leak per tier (upstream fetches / requests, manifests aside)", leaks, "ratio", xs)
    roles = sorted({name for _, _, cores in scrapes for name in cores})
    if roles:
        figure("CPU of each role scraped (the PoP's workers included)",
               [(role, [cores.get(role) for _, _, cores in scrapes]) for role in roles], "cores", xs)
    return plots


def render_html(report: dict[str, Any]) -> str:
    summary = report["summary"]
    rows = "".join("<tr><th>%s</th><td>%s</td></tr>" % (html.escape(k), html.escape(json.dumps(v)))
                   for k, v in summary.items())
    tier_rows = "".join(
        "<tr><td>%s</td><td>%s</td>%s</tr>" % (html.escape(role), html.escape(tier), "".join(
            "<td>%s</td>" % (("%.4f" % figures.get(k, math.nan)) if k.endswith("leak") else "%d" % figures.get(k, 0))
            for k in ("requests", "hits", "coalesced", "upstream", "leak", "manifest_requests", "manifest_fetches",
                      "manifest_leak")))
        for role, tiers in sorted(report.get("tiers", {}).items()) for tier, figures in sorted(tiers.items()))
    plots = _plots(report)
    images = "".join('<h2>%s</h2><img alt="%s" src="data:image/png;base64,%s">' % (
        html.escape(title), html.escape(title), data) for title, data in plots) or \
        "<p>(no plots: matplotlib is not installed; pip install 'fbstream[load]')</p>"
    return """<!doctype html><meta charset="utf-8"><title>fbstream load test</title>
<style>body{font-family:sans-serif;max-width:60em;margin:1em auto}td,th{padding:2px 8px;text-align:left}</style>
<h1>Load test: %s</h1><p>Against %s, from %d agent(s).</p>
<h2>What the viewers saw</h2><table>%s</table>
<h2>Cost per tier</h2><table><tr><th>role</th><th>tier</th><th>requests</th><th>hits</th><th>coalesced</th>
<th>upstream fetches</th><th>segment leak</th><th>manifest requests</th><th>manifest fetches</th>
<th>manifest leak</th></tr>%s</table>%s""" % (
        html.escape(json.dumps(report["scenario"])), html.escape(report["pop"]), len(report["agents"]), rows,
        tier_rows, images)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fbstream-load", description=__doc__.split("\n\n")[1].strip())
    parser.add_argument("--agent", action="append", required=True, help="an agent's URL (repeatable)")
    parser.add_argument("--pop", required=True, help="the PoP's viewers' URL, http://HOST:PORT")
    scenario_arguments(parser)
    steering_arguments(parser)
    parser.add_argument("--metrics", action="append", default=[], metavar="NAME=URL",
                        help="a role's /metrics to scrape (repeatable)")
    parser.add_argument("--report", default="load-report", help="the directory the report goes to")
    parser.add_argument("--secret-file", help="the agents' bearer secret (else $FBSTREAM_LOAD_SECRET)")
    parser.add_argument("--lead", type=float, default=2.0, help="seconds from now to the common start")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if any("=" not in spec for spec in args.metrics):
        parser.error("--metrics NAME=URL")
    try:
        report = run(args)
    except (ScenarioError, RuntimeError, OSError) as e:
        print("fbstream-load: %s" % (e,), file=sys.stderr)
        return 1
    json_path, html_path = write_report(report, args.report)
    print(json.dumps(report["summary"]))
    for role, tiers in sorted(report["tiers"].items()):
        for tier, figures in sorted(tiers.items()):
            print("%s %s: %d requests, %d hits, %d coalesced, %d upstream fetches, segment leak %.4f,"
                  " manifests %d asked %d fetched" % (
                      role, tier, figures.get("requests", 0), figures.get("hits", 0), figures.get("coalesced", 0),
                      figures.get("upstream", 0), figures.get("leak", math.nan), figures.get("manifest_requests", 0),
                      figures.get("manifest_fetches", 0)))
    print("report: %s, %s" % (json_path, html_path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
