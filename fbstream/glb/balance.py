"""
The decision engine: which PoPs each client network's new viewers go to.

Inputs, as Cartographer's were: each PoP's load and capacity (its reports,
once a second), and each client network's round-trip time to each PoP
(measured by players, smoothed, with a configured seed map for networks not
measured yet). Output: a :class:`Plan`, each network's PoPs with the share
of its new viewers each one takes.

Viewers already watching stay where they are (their player keeps its PoP),
so what the balancer places is the viewers each network is predicted to
gain while its plan is in force. A plan decided now steers viewers from
``lead`` seconds on (the time a new map takes to reach players) for
``interval`` seconds, on reports already some time old (their age is
measured: a report carries the time it was taken). Each network's viewers
(summed over the PoPs that report them) are predicted at both ends
(:mod:`fbstream.glb.predict`): what it gains before the plan starts goes
where the plan in force sends it, which gives each PoP's load when the new
plan starts; what it gains while the plan is in force is placed by a linear
program, solved with HiGHS about once a second:

    minimise    Σ y[n,p]·(rtt[n,p] - bonus[n,p]) + M·Σ over[n]
    subject to  Σ_p y[n,p] + over[n] = gain[n]                   for each network n
                Σ_n y[n,p] ≤ headroom·capacity[p] - early[p] - other[p]  for each PoP p
                y, over ≥ 0

where ``y[n,p]`` is how many of network n's new viewers PoP p takes,
``early[p]`` the PoP's load predicted for when the plan starts,
``other[p]`` the growth of its viewers that no reported network accounts
for, and ``over[n]`` what fits nowhere, at a cost ``M`` above any latency.
Minimising y·rtt minimises the total latency weighted by each network's
demand; a network's new viewers go to each PoP in proportion to
``y[n,p]``. A herd on the nearest PoP thus fills what room it has left and
spills the rest to the next nearest, before the PoP is full. A network that
is not growing sends its new viewers (churn) to its nearest PoP predicted to
have room. Each PoP's predicted load is ``early`` plus what the plan gives
it.

Demand is predicted, not each PoP's load, because a PoP's load is what the
balancer's own steering makes of the demand: a spline through it follows the
bends the last plans drew (bench/glb_sim.py measured a spline on PoP loads
overshooting capacity by 39 %, chasing its own corrections).

(Placing every viewer, watching or not, as a DNS-based balancer does, would
let the program move a PoP's room from one network to another while the PoP
is already full: its watching viewers cannot be moved by a new map.)

Hysteresis: the PoPs the last plan sent a network's new viewers to cost
``bonus`` milliseconds less, so that two PoPs of nearly the same latency, or
two networks of nearly the same distance from a PoP with room for one, do
not take turns at each solve.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

from fbstream.glb.predict import PREDICTORS, extrapolator

#: Round-trip time assumed to a PoP no measurement or seed covers, ms.
UNKNOWN_RTT = 250.0
#: The PoPs the linear program weighs for one network, nearest first.
CANDIDATES = 8
#: A PoP the plan fills to within this many viewers of its headroom is full.
FULL_MARGIN = 1.0
#: The series of a PoP's viewers that no reported network accounts for is REST + the PoP's name.
REST = "~"
#: Networks whose seeded round trips a seed map remembers.
SEED_CACHE = 200_000
#: Intervals a new point of the networks' viewers waits for every PoP's next report, at most.
STALE_POINT = 2.0


def network_of(address: str) -> str:
    """A client's network: its /24 for IPv4, its /48 for IPv6 (IPv4-mapped IPv6 is IPv4)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network("%s/%d" % (ip, prefix), strict=False))


@attrs.define
class SeedMap:
    """
    Configured round-trip times, ``{prefix: {pop: ms}}``: what a network no
    player has measured yet is assumed to have (the longest matching prefix).

    A lookup is a dictionary lookup per prefix length the map uses, and its
    answer is remembered (for :data:`SEED_CACHE` networks): the balancer
    asks for every network's round trips to every PoP at each decision (on
    its thread) and each map it gives (on the reactor).
    """

    entries: list[tuple[Any, dict[str, float]]] = attrs.field(factory=list)
    #: {(version, prefix length): {the prefix's address as an integer: round trips}}, longest first.
    index: dict[tuple[int, int], dict[int, dict[str, float]]] = attrs.field(init=False, factory=dict)
    cache: dict[str, dict[str, float]] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        for prefix, rtts in sorted(self.entries, key=lambda entry: -entry[0].prefixlen):
            self.index.setdefault((prefix.version, prefix.prefixlen), {}).setdefault(
                int(prefix.network_address), rtts)

    @classmethod
    def parse(cls, table: Mapping[str, Mapping[str, Any]]) -> SeedMap:
        entries = []
        for prefix, pops in table.items():
            net = ipaddress.ip_network(prefix, strict=False)
            rtts = {str(pop): float(ms) for pop, ms in pops.items()}
            if any(not math.isfinite(ms) or ms < 0 for ms in rtts.values()):
                raise ValueError("seed %s: round-trip times must be finite and not negative" % (prefix,))
            entries.append((net, rtts))
        return cls(entries)

    def lookup(self, network: str) -> dict[str, float]:
        found = self.cache.get(network)
        if found is not None:
            return found
        net = ipaddress.ip_network(network, strict=False)
        bits = net.max_prefixlen
        address = int(net.network_address)
        found = {}
        for (version, length), prefixes in self.index.items():
            if version == net.version and length <= net.prefixlen:
                rtts = prefixes.get(address >> (bits - length) << (bits - length))
                if rtts is not None:
                    found = rtts
                    break
        if len(self.cache) >= SEED_CACHE:
            self.cache.clear()
        self.cache[network] = found
        return found


@attrs.define
class PopLoad:
    """What the balancer knows of one PoP: its recent reports (``window`` seconds of them)."""

    name: str
    capacity: float = 0.0
    times: deque[float] = attrs.field(factory=deque)
    loads: deque[float] = attrs.field(factory=deque)
    #: Viewers per client network at the last report.
    networks: dict[str, float] = attrs.field(factory=dict)
    #: The other figures of the last report (requests/s, egress, CPU).
    figures: dict[str, float] = attrs.field(factory=dict)
    reported: float = -math.inf
    #: The load predicted for when the last plan starts to steer, and when it ends.
    early: float = 0.0
    predicted: float = 0.0

    @property
    def load(self) -> float:
        return self.loads[-1] if self.loads else 0.0


@attrs.frozen
class Problem:
    """One solve's inputs, copied from the balancer: solved off the reactor by :func:`solve`."""

    pops: tuple[str, ...]
    #: Room for new viewers at each PoP (headroom·capacity - early - other).
    room: tuple[float, ...]
    #: Each PoP's load predicted for when the plan starts, and its growth no network accounts for.
    early: tuple[float, ...]
    other: tuple[float, ...]
    #: Each PoP's headroom·capacity.
    limit: tuple[float, ...]
    networks: tuple[str, ...]
    #: The viewers each network is predicted to gain.
    gain: tuple[float, ...]
    #: Per network: ((pop index, cost), ...), nearest first.
    costs: tuple[tuple[tuple[int, float], ...], ...]


@attrs.frozen
class Plan:
    """Each network's share of new viewers per PoP, and what the solve saw."""

    #: network -> ((pop, share of its new viewers), ...), largest share first.
    shares: dict[str, tuple[tuple[str, float], ...]] = attrs.field(factory=dict)
    #: network -> the new viewers the program gave each PoP.
    assigned: dict[str, dict[str, float]] = attrs.field(factory=dict)
    #: PoP -> its load predicted for when the plan ends.
    predicted: dict[str, float] = attrs.field(factory=dict)
    #: The PoPs the plan fills to their headroom: last in every map while it is in force.
    full: frozenset[str] = frozenset()
    #: Viewers that fit nowhere.
    overflow: float = 0.0
    status: str = "empty"


def solve(problem: Problem) -> Plan:
    """The linear program of the module's docstring, with HiGHS; pure, so it may run on a thread."""
    n_pairs = sum(len(c) for c in problem.costs)
    ends = {pop: early + other for pop, early, other in zip(problem.pops, problem.early, problem.other)}
    if not problem.networks or not problem.pops:
        return Plan(predicted=ends, full=_full(problem, ends), status="empty")
    n_net = len(problem.networks)
    n_vars = n_pairs + n_net
    biggest = max((cost for costs in problem.costs for _, cost in costs), default=0.0)
    penalty = 10.0 * (biggest + UNKNOWN_RTT)
    c = np.empty(n_vars)
    eq_rows, eq_cols = [], []
    ub_rows, ub_cols = [], []
    pairs: list[tuple[int, int]] = []
    var = 0
    for n, costs in enumerate(problem.costs):
        for p, cost in costs:
            c[var] = cost
            eq_rows.append(n)
            eq_cols.append(var)
            ub_rows.append(p)
            ub_cols.append(var)
            pairs.append((n, p))
            var += 1
    for n in range(n_net):
        c[n_pairs + n] = penalty
        eq_rows.append(n)
        eq_cols.append(n_pairs + n)
    a_eq = coo_matrix((np.ones(len(eq_rows)), (eq_rows, eq_cols)), shape=(n_net, n_vars)).tocsr()
    a_ub = coo_matrix((np.ones(len(ub_rows)), (ub_rows, ub_cols)), shape=(len(problem.pops), n_vars)).tocsr()
    result = linprog(c, A_ub=a_ub, b_ub=np.maximum(np.array(problem.room), 0.0), A_eq=a_eq,
                     b_eq=np.array(problem.gain), bounds=(0, None), method="highs")
    if result.status != 0 or result.x is None:
        return Plan(predicted=ends, full=_full(problem, ends), status="failed: %s" % (result.message,))
    x = result.x
    assigned: dict[str, dict[str, float]] = {}
    left = list(np.maximum(np.array(problem.room), 0.0))
    for (n, p), value in zip(pairs, x[:n_pairs]):
        if value > 1e-9:
            assigned.setdefault(problem.networks[n], {})[problem.pops[p]] = float(value)
            ends[problem.pops[p]] += float(value)
            left[p] -= float(value)
    # What fits in none of a network's candidates goes where room is left,
    # however far; with none left anywhere, to its nearest (whose own valve
    # redirects past its capacity).
    for n, over in enumerate(x[n_pairs:]):
        if over <= 1e-9:
            continue
        network = problem.networks[n]
        spare = sum(max(0.0, room) for room in left)
        placed = {p: over * max(0.0, room) / spare for p, room in enumerate(left)} if spare > 1e-9 else \
            {problem.costs[n][0][0]: float(over)}
        for p, value in placed.items():
            if value > 1e-9:
                given = assigned.setdefault(network, {})
                given[problem.pops[p]] = given.get(problem.pops[p], 0.0) + value
                ends[problem.pops[p]] += value
                left[p] -= value
    shares: dict[str, tuple[tuple[str, float], ...]] = {}
    for network, given in assigned.items():
        whole = sum(given.values())
        shares[network] = tuple(sorted(((pop, value / whole) for pop, value in given.items()),
                                       key=lambda item: (-item[1], item[0])))
    return Plan(shares, assigned, ends, _full(problem, ends), float(x[n_pairs:].sum()), "optimal")


def _full(problem: Problem, ends: dict[str, float]) -> frozenset[str]:
    return frozenset(pop for pop, limit in zip(problem.pops, problem.limit) if ends[pop] >= limit - FULL_MARGIN)


def place(plan: Plan, spent: dict[str, dict[str, float]], network: str, viewers: float,
          fallback: Callable[[], str]) -> dict[str, float]:
    """
    Where ``viewers`` new viewers of ``network`` go under ``plan``: into
    what the plan gave each PoP for the network, in proportion to what is
    left of it (``spent`` keeps count), and what the plan did not foresee to
    ``fallback()``, the first PoP of the network's map (the plan's full PoPs
    last). A plan is a budget, not a ratio: a herd larger than predicted
    does not take a PoP past the room the plan found in it.
    """
    given = plan.assigned.get(network, {})
    used = spent.setdefault(network, {}) if given else {}
    left = {pop: value - used.get(pop, 0.0) for pop, value in given.items()}
    left = {pop: value for pop, value in left.items() if value > 1e-9}
    room = sum(left.values())
    out: dict[str, float] = {}
    if room > 0:
        take = min(viewers, room)
        for pop, value in left.items():
            out[pop] = take * value / room
            used[pop] = used.get(pop, 0.0) + out[pop]
        viewers -= take
    if viewers > 1e-9:
        first = fallback()
        out[first] = out.get(first, 0.0) + viewers
    return out


def place_one(plan: Plan, spent: dict[str, dict[str, float]], network: str, fallback: Callable[[], str]) -> str:
    """One new viewer of ``network``: the PoP with the most of its budget left (half a viewer at least), else ``fallback()``."""
    given = plan.assigned.get(network, {})
    if given:
        used = spent.setdefault(network, {})
        pop, left = max(((pop, value - used.get(pop, 0.0)) for pop, value in given.items()),
                        key=lambda item: (item[1], item[0]))
        if left >= 0.5:
            used[pop] = used.get(pop, 0.0) + 1.0
            return pop
    return fallback()


@attrs.define
class Balancer:
    """
    The balancer's state: PoP reports, smoothed round-trip times, and the
    last plan. Time is a parameter of each call (the reactor's, or a
    simulation's); nothing here waits or does I/O.
    """

    predictor: str = "spline"
    #: Seconds from a decision until its plan steers viewers: the time a new
    #: map takes to reach players (the reports' age is measured, not said).
    lead: float = 1.0
    #: Seconds a plan is in force (the next replaces it).
    interval: float = 1.0
    #: Seconds of reports kept per PoP (the load window).
    window: float = 3.0
    #: The share of each PoP's capacity the plan may fill.
    headroom: float = 0.9
    #: A PoP silent this long is down.
    down_after: float = 3.0
    #: Milliseconds the PoPs a network's new viewers last went to are favoured by.
    hysteresis_ms: float = 10.0
    #: The weight of a new round-trip sample in its smoothed value.
    smoothing: float = 0.3
    #: Networks whose round-trip times are remembered (least recently measured forgotten first).
    max_networks: int = 100_000
    seed: SeedMap = attrs.field(factory=SeedMap)
    pops: dict[str, PopLoad] = attrs.field(factory=dict)
    rtts: OrderedDict[str, dict[str, float]] = attrs.field(factory=OrderedDict)
    plan: Plan = attrs.field(factory=Plan)
    #: What the plan in force gave each network that new viewers have taken: {network: {pop: viewers}}.
    spent: dict[str, dict[str, float]] = attrs.field(factory=dict)
    #: The recent plans, by when they were decided: the ones that steered the viewers not reported yet.
    plans: deque[tuple[float, Plan]] = attrs.field(factory=deque)
    #: Each network's viewers at each decision of the last ``window`` seconds.
    demand: deque[tuple[float, dict[str, float]]] = attrs.field(factory=deque)
    #: The time of each PoP's report the newest point of ``demand`` was summed from.
    used: dict[str, float] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if self.predictor not in PREDICTORS:
            raise ValueError("unknown predictor %r (choose from %s)" % (self.predictor, ", ".join(PREDICTORS)))

    # Inputs

    def report(self, now: float, pop: str, capacity: float, viewers: float,
               networks: Mapping[str, float] | None = None, **figures: float) -> None:
        """
        PoP ``pop`` carried ``viewers`` (``networks`` of them by client
        network) of its ``capacity`` at ``now`` (when the report was taken);
        it is down ``down_after`` seconds after its last report.
        """
        state = self.pops.get(pop)
        if state is None:
            state = self.pops[pop] = PopLoad(pop)
        state.capacity = max(0.0, capacity)
        state.times.append(now)
        state.loads.append(max(0.0, viewers))
        while len(state.times) > 1 and state.times[0] <= now - self.window:
            state.times.popleft()
            state.loads.popleft()
        state.networks = {n: v for n, v in (networks or {}).items() if v > 0}
        state.figures = dict(figures)
        state.reported = max(state.reported, now)

    def heard(self, pop: str, now: float) -> None:
        """PoP ``pop`` reported at ``now`` (its figures wait for :meth:`report`): it is alive."""
        state = self.pops.get(pop)
        if state is not None:
            state.reported = max(state.reported, now)

    def measured(self, network: str, pop: str, ms: float) -> None:
        """A player of ``network`` measured ``ms`` to ``pop``: smoothed into what is known."""
        if not math.isfinite(ms) or ms < 0:
            return
        known = self.rtts.get(network)
        if known is None:
            known = self.rtts[network] = {}
            while len(self.rtts) > self.max_networks:
                self.rtts.popitem(last=False)
        else:
            self.rtts.move_to_end(network)
        old = known.get(pop)
        known[pop] = ms if old is None else old + self.smoothing * (ms - old)

    # What is known

    def alive(self, now: float) -> list[str]:
        return sorted(name for name, state in self.pops.items() if now - state.reported <= self.down_after)

    def rtt(self, network: str, pop: str) -> float:
        """The smoothed measurement, else the seed's, else :data:`UNKNOWN_RTT`."""
        known = self.rtts.get(network)
        if known is not None and pop in known:
            return known[pop]
        return self.seed.lookup(network).get(pop, UNKNOWN_RTT)

    def _plan_at(self, made_by: float) -> Plan:
        """The last plan made by ``made_by``: the one in force ``lead`` seconds later."""
        found = self.plans[0][1] if self.plans else self.plan
        for made, plan in self.plans:
            if made > made_by + 1e-9:
                break
            found = plan
        return found

    def _in_force(self, plan: Plan, network: str, alive: list[str],
                  firsts: dict[tuple[int, str], str]) -> list[tuple[str, float]]:
        """Where ``plan`` sends ``network``'s new viewers: its shares, or the first PoP of its map (kept in ``firsts``)."""
        shares = [(pop, share) for pop, share in plan.shares.get(network, ()) if pop in alive]
        whole = sum(share for _, share in shares)
        if whole > 0:
            return [(pop, share / whole) for pop, share in shares]
        key = (id(plan), network)
        if key not in firsts:
            firsts[key] = self.ranked(network, alive, plan.full)[0]
        return [(firsts[key], 1.0)]

    def ranked(self, network: str, alive: list[str], full: frozenset[str]) -> list[str]:
        """``alive`` by round-trip time from ``network``, the ones in ``full`` last."""
        return sorted(alive, key=lambda pop: (pop in full, self.rtt(network, pop), pop))

    # The decision

    def problem(self, now: float) -> Problem:
        """The linear program for the PoPs alive at ``now``, from what they reported."""
        alive = self.alive(now)
        index = {name: i for i, name in enumerate(alive)}
        demand: dict[str, float] = {}
        for name in alive:
            state = self.pops[name]
            for network, viewers in state.networks.items():
                demand[network] = demand.get(network, 0.0) + viewers
            # A PoP's viewers no reported network accounts for: a series of their own.
            rest = state.load - sum(state.networks.values())
            if rest > 0:
                demand[REST + name] = rest
        # The reports' time (not the decision's): their age is part of what
        # is predicted across. A network's viewers are a sum over PoPs that
        # report at their own moments: a sum taken before each PoP has
        # reported again would stamp one PoP's old count with a newer time,
        # a flat step in a rising series (the herd then went on to its
        # nearest PoP for a second). So a new point waits for every PoP
        # alive, until its reports' time is STALE_POINT intervals old.
        fresh = all(self.pops[name].times[-1] > self.used.get(name, -math.inf) for name in alive)
        if fresh or not self.demand or now - self.demand[-1][0] >= STALE_POINT * self.interval:
            seen_at = min(now, sum(self.pops[name].times[-1] for name in alive) / len(alive)) if alive else now
            self.used = {name: self.pops[name].times[-1] for name in alive}
            self.demand.append((seen_at, demand))
            # The window's points, counted with half an interval to spare:
            # points a hair less than an interval apart must not make it
            # four points one second and three the next (the spline through
            # four is a cubic whose third derivative is noise: it saw a
            # steady rise end every other second).
            while len(self.demand) > 1 and self.demand[0][0] <= seen_at - self.window + self.interval / 2:
                self.demand.popleft()
        seen_at, demand = self.demand[-1]
        series = sorted(demand)
        times = [t for t, _ in self.demand]
        history = np.array([[seen.get(name, 0.0) for name in series] for _, seen in self.demand]).reshape(
            len(times), len(series))
        current = history[-1]
        # The growth from the reports until the new plan steers, slice by
        # slice, each sent where the plan in force in that slice sends it;
        # then the growth the new plan places.
        starts = now + self.lead
        marks = [seen_at + k * self.interval for k in range(1, math.ceil((starts - seen_at) / self.interval - 1e-9))]
        marks.append(starts)
        ahead = extrapolator(self.predictor, times, history)
        levels = [current] + [ahead(at - seen_at) for at in marks]
        reached = np.maximum.accumulate(np.array(levels), axis=0)
        after = ahead(starts + self.interval - seen_at)
        grows = np.maximum(0.0, after - reached[-1])
        early = {name: self.pops[name].load for name in alive}
        other = dict.fromkeys(alive, 0.0)
        firsts: dict[tuple[int, str], str] = {}
        for k in range(1, len(levels)):
            plan = self._plan_at((marks[k - 2] if k > 1 else seen_at) - self.lead)
            for name, soon in zip(series, reached[k] - reached[k - 1]):
                if soon <= 0:
                    continue
                if name.startswith(REST):
                    early[name[len(REST):]] += soon
                    continue
                for pop, share in self._in_force(plan, name, alive, firsts):
                    early[pop] += soon * share
        gain: dict[str, float] = {}
        for name, later in zip(series, grows):
            if name.startswith(REST):
                other[name[len(REST):]] += later
            elif later > 1e-6:
                gain[name] = float(later)
        for name in alive:
            self.pops[name].early = early[name]
        networks = sorted(gain)
        costs = []
        for network in networks:
            ranked = sorted(alive, key=lambda pop: self.rtt(network, pop))[:CANDIDATES]
            used = dict(self.plan.shares.get(network, ()))
            costs.append(tuple((index[pop], self.rtt(network, pop) - (self.hysteresis_ms if pop in used else 0.0))
                               for pop in ranked))
        room = tuple(self.headroom * self.pops[name].capacity - early[name] - other[name] for name in alive)
        return Problem(tuple(alive), room, tuple(early[name] for name in alive), tuple(other[name] for name in alive),
                       tuple(self.headroom * self.pops[name].capacity for name in alive),
                       tuple(networks), tuple(gain[n] for n in networks), tuple(costs))

    def adopt(self, plan: Plan, made: float) -> None:
        """Make ``plan``, decided at ``made``, the newest (in force ``lead`` seconds later)."""
        self.plan = plan
        self.spent = {}
        self.plans.append((made, plan))
        while len(self.plans) > 1 and self.plans[1][0] <= made - self.down_after - self.lead - self.interval:
            self.plans.popleft()
        for name, load in plan.predicted.items():
            if name in self.pops:
                self.pops[name].predicted = load

    def decide(self, now: float) -> Plan:
        """Solve here and adopt the plan (what a simulation does; the role solves on a thread)."""
        self.adopt(solve(self.problem(now)), now)
        return self.plan

    def order(self, network: str, now: float = 0.0, alive: list[str] | None = None) -> list[str]:
        """
        The PoPs for a new viewer of ``network``, best first: the first from
        what the plan in force gave the network (:func:`place_one`); then the
        others alive by round-trip time, those the plan fills last.
        """
        if alive is None:
            alive = self.alive(now)
        if not alive:
            return []
        ranked = self.ranked(network, alive, self.plan.full)
        first = place_one(self.plan, self.spent, network, lambda: ranked[0])
        if first in alive:
            ranked.remove(first)
            ranked.insert(0, first)
        return ranked

    def elsewhere(self, pop: str, networks: Iterable[str], now: float) -> tuple[dict[str, list[str]], list[str]]:
        """
        Where a full ``pop`` may send a new viewer (its safety valve): the
        other PoPs alive and under their capacity, by round-trip time from
        each of ``networks``; and, for a network not among them, by the
        room they have, the most first. Nothing here spends the plan's
        budget: these are viewers the plan did not send where they went.
        """
        room = [name for name in self.alive(now)
                if name != pop and self.pops[name].load < self.pops[name].capacity]
        maps = {network: self.ranked(network, room, self.plan.full) for network in networks}
        spill = sorted(room, key=lambda name: (self.pops[name].load - self.pops[name].capacity, name))
        return maps, spill

    def state(self, now: float) -> dict[str, Any]:
        """What ``/v1/state`` shows."""
        alive = set(self.alive(now))
        return {
            "predictor": self.predictor,
            "lead": self.lead,
            "interval": self.interval,
            "headroom": self.headroom,
            "pops": {
                name: {
                    "alive": name in alive,
                    "capacity": state.capacity,
                    "load": state.load,
                    "early": state.early,
                    "predicted": state.predicted,
                    "window": list(zip(state.times, state.loads)),
                    "networks": len(state.networks),
                    "age": now - state.reported if math.isfinite(state.reported) else None,
                    **state.figures,
                }
                for name, state in sorted(self.pops.items())
            },
            "plan": {
                "status": self.plan.status,
                "overflow": self.plan.overflow,
                "networks": {network: [list(item) for item in shares] for network, shares in self.plan.shares.items()},
            },
        }
