"""
The global load balancer's engine: the load predictors and the plan that
sends each client network's new viewers to the nearest PoP with room.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fbstream.glb.balance import UNKNOWN_RTT, Balancer, Problem, SeedMap, network_of, solve
from fbstream.glb.predict import PREDICTORS, derivatives, predict, predict_many
from fbstream.glb.service import MAX_REPORTED_NETWORKS, BadReport, parse_report, parse_rtt

# The predictors


def test_three_reports_make_a_parabola_and_two_a_line():
    # y = t^2 through t = 0, 1, 2: one second on, 9.
    assert predict("spline", [0, 1, 2], [0, 1, 4], 1) == pytest.approx(9)
    d1, d2 = derivatives([0, 1, 2], [0, 1, 4])
    assert (d1[0], d2[0]) == (pytest.approx(4), pytest.approx(2))
    assert predict("spline", [0, 1], [10, 12], 3) == pytest.approx(18)
    assert predict("linear", [0, 1, 2], [0, 1, 2], 2) == pytest.approx(4)
    assert predict("reactive", [0, 1, 2], [0, 1, 4], 5) == 4


def test_a_rise_that_slows_is_followed_to_its_plateau_not_down_the_other_side():
    # y = -t^2 + 6t through t = 0, 1, 2 (0, 5, 8): it peaks at t = 3, at 9.
    assert predict("spline", [0, 1, 2], [0, 5, 8], 1) == pytest.approx(9)
    assert predict("spline", [0, 1, 2], [0, 5, 8], 10) == pytest.approx(9)
    # The parabola itself would be back at 0 by t = 6.


def test_a_rise_that_speeds_up_adds_at_most_as_much_again_as_the_line():
    # y = t^2 at t = 0, 1, 2: slope 4, curvature 2; ten seconds on the
    # parabola says 144, the line 44: the clamp stops at 4 + 40 + 40.
    assert predict("spline", [0, 1, 2], [0, 1, 4], 10) == pytest.approx(84)


def test_a_fall_never_predicts_less_than_nothing():
    assert predict("linear", [0, 1, 2], [100, 50, 0], 10) == 0
    assert predict("spline", [0, 1, 2], [100, 80, 10], 10) == 0


def test_reports_out_of_order_repeated_or_broken_are_tolerated():
    assert predict("spline", [2, 0, 1], [4, 0, 1], 1) == pytest.approx(9)
    assert predict("spline", [], [], 1) == 0
    assert predict("linear", [0, 0, 1], [5, 0, 1], 1) == pytest.approx(2)
    assert predict("spline", [0, math.nan, 1], [0, 7, 1], 1) == pytest.approx(2)
    with pytest.raises(ValueError):
        predict("psychic", [0], [1], 1)


def test_many_series_at_once_match_each_alone():
    times = [0.0, 1.0, 2.0, 3.0]
    loads = np.array([[0, 10, 5], [1, 12, 5], [4, 13, 6], [9, 13, 8]], dtype=float)
    together = predict_many("spline", times, loads, 2.5)
    for i in range(3):
        assert together[i] == pytest.approx(predict("spline", times, list(loads[:, i]), 2.5))


finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(min_value=0, max_value=100), finite), min_size=0, max_size=6),
       st.floats(min_value=0, max_value=60), st.sampled_from(PREDICTORS))
def test_any_reports_give_a_finite_prediction_not_below_zero(reports, horizon, kind):
    times = [t for t, _ in reports]
    loads = [y for _, y in reports]
    value = predict(kind, times, loads, horizon)
    assert math.isfinite(value) and value >= 0
    if kind == "spline" and len({t for t in times}) == len(times) >= 2:
        # Never beyond twice the line's step from the last report (the clamp).
        last = max(0.0, loads[times.index(max(times))])
        d1, _ = derivatives(times, loads)
        assert value <= last + 2 * abs(d1[0]) * horizon + 1e-6 * (1 + abs(last) + abs(d1[0]) * horizon)


# Networks and round-trip times


def test_a_client_network_is_its_slash_24_or_slash_48():
    assert network_of("127.0.1.7") == "127.0.1.0/24"
    assert network_of("::ffff:10.1.2.3") == "10.1.2.0/24"
    assert network_of("2001:db8:1:2::5") == "2001:db8:1::/48"
    with pytest.raises(ValueError):
        network_of("not an address")


def test_measurements_are_smoothed_and_the_seed_covers_the_rest():
    seed = SeedMap.parse({"127.0.0.0/8": {"a": 50}, "127.0.2.0/24": {"a": 5, "b": 7}})
    balancer = Balancer(seed=seed, smoothing=0.5)
    assert balancer.rtt("127.0.2.0/24", "a") == 5  # the longest prefix
    assert balancer.rtt("127.0.9.0/24", "a") == 50
    assert balancer.rtt("10.0.0.0/24", "a") == UNKNOWN_RTT
    balancer.measured("127.0.9.0/24", "a", 10)
    balancer.measured("127.0.9.0/24", "a", 30)
    assert balancer.rtt("127.0.9.0/24", "a") == 20
    balancer.measured("127.0.9.0/24", "a", math.inf)
    balancer.measured("127.0.9.0/24", "a", -1)
    assert balancer.rtt("127.0.9.0/24", "a") == 20
    with pytest.raises(ValueError):
        SeedMap.parse({"127.0.0.0/8": {"a": -1}})


def test_the_networks_remembered_are_bounded():
    balancer = Balancer(max_networks=3)
    for i in range(10):
        balancer.measured("10.0.%d.0/24" % (i,), "a", i)
    assert list(balancer.rtts) == ["10.0.7.0/24", "10.0.8.0/24", "10.0.9.0/24"]


# The plan

NEAR, FAR = "127.0.1.0/24", "127.0.2.0/24"
SEED = SeedMap.parse({NEAR: {"a": 5, "b": 20, "c": 40}, FAR: {"a": 40, "b": 20, "c": 5}})


def herd(balancer, until, rate, start=0, pops=("a", "b", "c"), on="a"):
    """``rate`` viewers a second of network NEAR join, each where the plan says, one report a second."""
    viewers = {pop: {NEAR: 0.0} for pop in pops}
    for t in range(start, until):
        for pop in pops:
            balancer.report(t, pop, 1000, sum(viewers[pop].values()), viewers[pop])
        balancer.decide(t)
        for _ in range(rate):
            viewers[balancer.order(NEAR, t)[0]][NEAR] += 1
    return viewers


def test_a_network_goes_to_its_nearest_pop_while_it_has_room():
    balancer = Balancer(seed=SEED)
    for pop in "abc":
        balancer.report(0, pop, 1000, 0)
    balancer.decide(0)
    assert balancer.order(NEAR, 0) == ["a", "b", "c"]
    assert balancer.order(FAR, 0) == ["c", "b", "a"]


@pytest.mark.parametrize("kind", ["linear", "spline"])
def test_a_herd_spills_to_the_next_nearest_before_its_pop_is_full(kind):
    # 100 viewers a second at a PoP of 1,000: full in 10 s. Reports are
    # fresh here (lead 1 s): the plan must stop at the headroom.
    balancer = Balancer(predictor=kind, seed=SEED, lead=1.0, headroom=0.9)
    viewers = herd(balancer, 25, 100)
    carried = {pop: sum(v.values()) for pop, v in viewers.items()}
    assert carried["a"] <= 900 + 100  # one second's herd past the headroom at most
    assert carried["b"] > 0 and carried["a"] + carried["b"] + carried["c"] == 2500
    assert carried["b"] >= carried["c"]


def test_no_prediction_overshoots_where_prediction_does_not():
    # Reports reach the balancer 3 s after they are taken: the reactive
    # balancer keeps sending the herd to a PoP until a report shows it full;
    # the predictors stop in time.
    def overshoot(kind):
        balancer = Balancer(predictor=kind, seed=SEED, lead=1.0, headroom=0.9, down_after=5.0)
        viewers = {pop: {NEAR: 0.0} for pop in "abc"}
        reports = []
        for pop in "abc":
            balancer.report(-1, pop, 1000, 0)
        for t in range(12):  # 1,800 viewers: the three PoPs' 2,700 hold them
            for _ in range(150):
                viewers[balancer.order(NEAR, t)[0]][NEAR] += 1
            reports.append((t, {pop: dict(v) for pop, v in viewers.items()}))
            if t >= 3:
                taken, seen = reports.pop(0)
                for pop in "abc":
                    balancer.report(taken, pop, 1000, sum(seen[pop].values()), seen[pop])
                balancer.decide(t)
        return max(sum(viewers[pop].values()) for pop in "abc")

    assert overshoot("reactive") > 1000
    assert overshoot("linear") <= 1000
    assert overshoot("spline") <= 1000


def test_a_pop_that_stops_reporting_is_down():
    balancer = Balancer(seed=SEED, down_after=3.0)
    for pop in "abc":
        balancer.report(0, pop, 1000, 0)
    balancer.report(2, "b", 1000, 0)
    balancer.report(2, "c", 1000, 0)
    assert balancer.alive(3) == ["a", "b", "c"]
    assert balancer.alive(4) == ["b", "c"]
    balancer.decide(4)
    assert balancer.order(NEAR, 4) == ["b", "c"]
    assert balancer.order(NEAR, 100) == []


def test_a_full_pop_goes_last_in_the_map():
    balancer = Balancer(seed=SEED)
    balancer.report(0, "a", 1000, 950)
    balancer.report(0, "b", 1000, 10)
    balancer.report(0, "c", 1000, 10)
    balancer.decide(0)
    assert balancer.order(NEAR, 0) == ["b", "c", "a"]


def test_what_fits_nowhere_near_goes_where_room_is_left():
    problem = Problem(pops=("a", "b", "c"), room=(0.0, 0.0, 50.0), early=(900.0, 900.0, 0.0), other=(0.0, 0.0, 0.0), limit=(900.0, 900.0, 900.0),
                      networks=(NEAR,), gain=(100.0,), costs=(((0, 5.0), (1, 20.0)),))
    plan = solve(problem)
    assert plan.status == "optimal" and plan.overflow == pytest.approx(100)
    assert plan.shares[NEAR] == (("c", pytest.approx(1.0)),)
    problem = Problem(pops=("a", "b"), room=(0.0, 0.0), early=(900.0, 900.0), other=(0.0, 0.0), limit=(900.0, 900.0),
                      networks=(NEAR,), gain=(100.0,), costs=(((0, 5.0), (1, 20.0)),))
    assert solve(problem).shares[NEAR] == (("a", pytest.approx(1.0)),)


def test_the_latency_paid_is_the_least_the_room_allows():
    # Two networks, one PoP with room for one of them: the one it is nearer
    # to by more gets it (the other pays less to go elsewhere).
    problem = Problem(pops=("a", "b"), room=(100.0, 1000.0), early=(0.0, 0.0), other=(0.0, 0.0), limit=(900.0, 900.0),
                      networks=("x", "y"), gain=(100.0, 100.0),
                      costs=(((0, 5.0), (1, 10.0)), ((0, 5.0), (1, 50.0))))
    plan = solve(problem)
    assert plan.shares["y"] == (("a", pytest.approx(1.0)),)
    assert plan.shares["x"] == (("b", pytest.approx(1.0)),)


def test_hysteresis_keeps_a_network_where_it_went_when_the_choice_is_close():
    balancer = Balancer(seed=SeedMap.parse({NEAR: {"a": 10, "b": 12}}), hysteresis_ms=5.0)
    for t in range(3):
        balancer.report(t, "a", 1000, 100 * t, {NEAR: 100 * t})
        balancer.report(t, "b", 1000, 0)
        balancer.decide(t)
    assert balancer.plan.shares[NEAR][0][0] == "a"
    # b becomes nearer by 1 ms: not enough to move the network's new viewers.
    balancer.measured(NEAR, "a", 12)
    balancer.measured(NEAR, "b", 11)
    balancer.report(3, "a", 1000, 300, {NEAR: 300})
    balancer.report(3, "b", 1000, 0)
    balancer.decide(3)
    assert balancer.plan.shares[NEAR][0][0] == "a"


def test_the_state_says_what_the_balancer_knows():
    balancer = Balancer(seed=SEED)
    herd(balancer, 5, 10, pops=("a", "b"))
    state = balancer.state(4)
    assert state["pops"]["a"]["alive"] and state["pops"]["a"]["load"] == 40
    assert state["pops"]["a"]["predicted"] >= 50
    assert state["plan"]["status"] == "optimal"
    assert NEAR in state["plan"]["networks"]


# What PoPs and players send


POPS = {"pop1": "http://127.0.0.1:1", "pop2": "http://127.0.0.1:2"}


def test_a_report_is_checked_and_its_networks_normalised():
    pop, part, report = parse_report({"pop": "pop1", "part": 2, "capacity": 100, "viewers": 7,
                                      "networks": {"10.1.2.0/24": 3, "10.1.2.77": 2, "2001:db8:1::/48": 2},
                                      "requests": 12.5, "egress": 1e6, "cpu": 0.5}, POPS)
    assert (pop, part) == ("pop1", 2)
    assert report.networks == {"10.1.2.0/24": 5.0, "2001:db8:1::/48": 2.0}
    assert report.figures == {"requests": 12.5, "egress": 1e6, "cpu": 0.5}
    cases: list[tuple[object, str]] = [
        ([], "JSON object"),
        ({"pop": "pop9", "capacity": 1, "viewers": 1}, "pop: one of"),
        ({"pop": ["pop1"], "capacity": 1, "viewers": 1}, "pop: one of"),
        ({"pop": "pop1", "capacity": 1, "viewers": True}, "viewers"),
        ({"pop": "pop1", "capacity": float("nan"), "viewers": 1}, "capacity"),
        ({"pop": "pop1", "capacity": 1, "viewers": 1, "part": 256}, "part"),
        ({"pop": "pop1", "capacity": 1, "viewers": 1, "networks": {"nope": 1}}, "not a network"),
        ({"pop": "pop1", "capacity": 1, "viewers": 1,
          "networks": {"10.%d.%d.0/24" % (i // 256, i % 256): 1 for i in range(MAX_REPORTED_NETWORKS + 1)}},
         "at most"),
    ]
    for bad, says in cases:
        with pytest.raises(BadReport, match=says):
            parse_report(bad, POPS)
    assert parse_rtt({"rtt": {"pop2": 12}}, POPS) == {"pop2": 12.0}
    refused: list[object] = [{}, {"rtt": {}}, {"rtt": {"pop3": 1}}, {"rtt": {"pop1": -1}}, {"rtt": {"pop1": 1e9}},
                             {"rtt": []}]
    for wrong in refused:
        with pytest.raises(BadReport):
            parse_rtt(wrong, POPS)


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, st.fixed_dictionaries({
    "pop": st.sampled_from(["pop1", "pop2", "x"]), "capacity": json_values, "viewers": json_values,
    "networks": st.dictionaries(st.text(max_size=45), json_values, max_size=5), "part": json_values})))
def test_any_json_is_a_report_or_a_clear_error(body):
    try:
        pop, part, report = parse_report(body, POPS)
    except BadReport as e:
        assert str(e)
    else:
        assert pop in POPS and 0 <= part < 256 and all(v >= 0 for v in report.networks.values())
    try:
        parse_rtt(body, POPS)
    except BadReport as e:
        assert str(e)


def test_a_herd_stays_placed_when_the_pops_report_at_their_own_moments():
    # The balancer decides at k+0.5. PoP b reports at k+0.1; PoP a, which
    # carries the herd, at k+0.45 and k+1.55 by turns (its clock drifts
    # around the decision's): every other decision comes before a has
    # reported again. Each must still see the herd growing, else its new
    # viewers go on to their nearest PoP, a, for that second.
    balancer = Balancer(seed=SEED, lead=1.0, interval=1.0)
    viewers = {"a": 0.0, "b": 0.0}
    placed = []
    for k in range(14):
        balancer.report(k + 0.1, "b", 1000, viewers["b"], {NEAR: viewers["b"]})
        if k % 2:
            balancer.report(k - 0.45, "a", 1000, viewers["a"], {NEAR: viewers["a"]})
            balancer.report(k + 0.45, "a", 1000, viewers["a"], {NEAR: viewers["a"]})
        plan = balancer.decide(k + 0.5)
        if k >= 4:
            placed.append(round(sum(plan.assigned.get(NEAR, {}).values())))
        for _ in range(100):  # 100 viewers a second
            viewers[balancer.order(NEAR, k + 0.6)[0]] += 1
    assert min(placed) > 0, placed


def test_the_window_holds_as_many_points_whatever_the_jitter():
    # Decisions a hair under a second apart: the window (3 s) must keep
    # three points each time, not four now and then.
    balancer = Balancer(seed=SEED, lead=1.0, interval=1.0)
    placed = []
    for k in range(12):
        t = k * 0.9999 + (0.0002 if k % 2 else 0.0)
        balancer.report(t, "a", 10_000, 7.0 * k, {NEAR: 7.0 * k})
        balancer.report(t, "b", 10_000, 0.0, {})
        balancer.decide(t + 0.1)
        assert len(balancer.demand) <= 3
        if k >= 3:
            placed.append(sum(balancer.plan.assigned.get(NEAR, {}).values()))
    assert min(placed) > 5, placed


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)), max_size=12),
       st.integers(0, 2**32 - 1))
def test_the_seed_is_the_longest_matching_prefix(prefixes, address):
    import ipaddress

    table = {str(ipaddress.ip_network((a, n), strict=False)): {"p": float(n)} for a, n in prefixes}
    seed = SeedMap.parse(table)
    network = network_of(str(ipaddress.ip_address(address)))
    net = ipaddress.IPv4Network(network)
    matching = [ipaddress.IPv4Network(p) for p in table if net.subnet_of(ipaddress.IPv4Network(p))]
    expected = table[str(max(matching, key=lambda p: p.prefixlen))] if matching else {}
    assert seed.lookup(network) == expected
    assert seed.lookup(network) == expected  # remembered
