"""Load scenarios: how many watch when, which stream each picks, and what an agent's share is."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from fbstream.load.scenario import Scenario, ScenarioError


def test_steady_and_herd_join_over_their_spread_and_stay() -> None:
    steady = Scenario(viewers=100, seconds=60, join_over=10)
    assert [steady.wanted(t) for t in (0, 5, 10, 59.9, 60)] == [0, 50, 100, 100, 0]
    herd = Scenario(kind="herd", viewers=1000, join_over=0)
    assert herd.wanted(0) == 1000


def test_the_watermelon_rises_holds_and_drops_as_the_video_ends() -> None:
    ramp = Scenario(kind="ramp", viewers=1000, seconds=100, rise=20, fall=10)
    assert [ramp.wanted(t) for t in (0, 10, 20, 50, 90, 95, 99.9)] == [0, 500, 1000, 1000, 1000, 500, 9]


def test_ten_times_a_profile_and_its_split_across_agents() -> None:
    profile = Scenario(viewers=333, scale=10)
    shares = [profile.share(i, 4) for i in range(4)]
    assert [s.viewers for s in shares] == [833, 833, 832, 832] and sum(s.viewers for s in shares) == 3330
    assert all(s.scale == 1 for s in shares)


def test_zipf_popularity_favours_the_first_streams_and_a_herd_watches_one() -> None:
    rng = random.Random(7)
    pick = Scenario(streams=("a", "b", "c", "d"), zipf=1.0).picker(rng)
    seen = Counter(pick() for _ in range(10000))
    assert seen["a"] > seen["b"] > seen["c"] > seen["d"]
    assert abs(seen["a"] / seen["b"] - 2) < 0.3  # 1/1 against 1/2
    herd = Scenario(kind="herd", streams=("viral", "other")).picker(rng)
    assert {herd() for _ in range(100)} == {"viral"}


def test_a_scenario_from_json_round_trips_and_nonsense_is_refused() -> None:
    scenario = Scenario(kind="ramp", viewers=10, seconds=30, rise=5, fall=5, streams=("x", "y"))
    assert Scenario.from_json(scenario.to_json()) == scenario
    bad: object
    for bad in ([], {"kind": "flood"}, {"viewers": "many"}, {"viewers": True}, {"streams": []},
                {"extra": 1}, {"seconds": 0}, {"viewers": 10**9}, {"churn": 1.5},
                {"kind": "ramp", "seconds": 10, "rise": 8, "fall": 8}, {"join_over": -1}):
        with pytest.raises(ScenarioError):
            Scenario.from_json(bad)
