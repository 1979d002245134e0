"""
The load generator as a user runs it: a ``twistd fbstream --role=loadgen``
agent, driven by the ``fbstream-load`` controller, plays 500 simulated
viewers of the ``all`` role's demo through the PoP for 20 s, and the
controller writes its report, plots and all.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter

from .conftest import ROOT, free_port
from .test_push import ok_within
from .test_twistd import all_role_process, twistd

VIEWERS, SECONDS = 500, 20


def test_500_viewers_of_the_demo_cost_each_tier_one_fetch_per_object(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    with all_role_process(tmp_path) as (ports, log):
        pop = "http://127.0.0.1:%d" % (ports["pop"],)
        assert ok_within(pop + "/live/demo/manifest.mpd", 40) == 200, log.read_text()[-3000:]
        agent_port = free_port()
        agent = subprocess.Popen(
            [twistd(), "-n", "--pidfile=", "--logfile=%s" % (tmp_path / "loadgen.log",), "fbstream", "--role=loadgen",
             "--set", "http.listen=tcp:%d:interface=127.0.0.1" % (agent_port,), "--set", "loadgen.name=agent0"],
            cwd=str(tmp_path), env=env)
        try:
            agent_url = "http://127.0.0.1:%d" % (agent_port,)
            assert ok_within(agent_url + "/v1/run", 30) == 200, (tmp_path / "loadgen.log").read_text()[-2000:]
            controller = subprocess.run(
                [sys.executable, "-m", "fbstream.load.controller", "--agent", agent_url, "--pop", pop,
                 "--viewers", str(VIEWERS), "--seconds", str(SECONDS), "--join-over", "5",
                 "--metrics", "all=%s/metrics" % (pop,), "--report", str(tmp_path / "report")],
                env=env, capture_output=True, timeout=SECONDS + 90)
        finally:
            agent.terminate()
            agent.wait(30)
        why = "controller:\n%s\n%s\nagent:\n%s\nserver:\n%s" % (
            controller.stdout.decode()[-3000:], controller.stderr.decode()[-3000:],
            (tmp_path / "loadgen.log").read_text()[-2000:], log.read_text()[-2000:])
        assert controller.returncode == 0, why
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    summary = report["summary"]
    assert summary["viewers"] == VIEWERS and summary["started"] == VIEWERS, why
    assert summary["errors"] == {}, why
    assert summary["cpu_saturated_seconds"] == 0, why  # else its figures are its own
    assert len(report["seconds"]) >= SECONDS - 2
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3, "the report has no plots"
    # Coalescing at every tier: each segment 500 viewers asked for cost each
    # tier that fetched it one fetch upstream (each tier names itself in its
    # requests' User-Agent). With the push channel flowing the PoP's cache
    # layer and the origin fetch next to nothing: the proxy layer fetches
    # from the cache layer (and asks again for the manifest, which the cache
    # layer keeps the newest pushed version of, whenever a viewer wants it).
    tiers = report["tiers"]["all"]
    assert tiers["pop-proxy"]["requests"] >= summary["requests"] * 0.95, tiers
    fetched = Counter(re.findall(
        r'"GET (/live/demo/[^ ?]+\.(?:m4s|mp4)) HTTP/1.1" \d+ \d+ "-" "fbstream-cache \(([\w-]+)\)"',
        "".join(path.read_text() for path in tmp_path.glob("twistd.log*"))))
    assert fetched and set(fetched.values()) == {1}, fetched.most_common(5)
    assert len({path for path, tier in fetched if tier == "pop-proxy"}) <= summary["distinct_paths"]
    # The segments' leak (Facebook saw 1.8 % before coalescing). The proxy
    # layer's manifests are asked of the cache layer beside it whenever a
    # viewer wants one (each coalesced while a fetch is out): how many
    # depends on how fast that layer answers, so they are not in it.
    assert tiers["pop-proxy"]["leak"] < 0.02, tiers
    assert tiers["pop-proxy"]["manifest_requests"] > 0, tiers
    for tier in ("pop-cache", "origin"):
        assert tiers[tier]["upstream"] <= 0.05 * tiers["pop-proxy"]["upstream"], tiers
    print("loadgen: %s | %s" % (json.dumps(summary), json.dumps(tiers)))
