"""
What a load test does over time: how many viewers watch at each moment,
which stream each one picks, and how many of them come and go.

- ``steady``: ``viewers`` join over ``join_over`` seconds and stay;
- ``herd``: ``viewers`` join one stream within ``join_over`` seconds (a
  stream gone viral: a few seconds, not minutes);
- ``ramp``: the watermelon curve, a steep rise over ``rise`` seconds to
  ``viewers``, a hold, and the drop when the video ends over ``fall``
  seconds at the end of the run;
- any of them over many streams with Zipf popularity (``zipf`` > 0: the
  stream of rank k is watched in proportion to 1/k^zipf);
- ``churn``: the share of viewers per second that leave, replaced by as
  many new ones;
- ``scale``: a profile run at a multiple of its viewers (10 for "10x").

A scenario is plain data (it travels from the controller to every agent as
JSON); each agent runs its ``share`` of the viewers.
"""

from __future__ import annotations

import random
from typing import Any

import attrs

KINDS = ("steady", "herd", "ramp")
#: Viewers one scenario may ask of one agent.
MAX_VIEWERS = 100_000


class ScenarioError(ValueError):
    """A scenario that does not make sense; the message says why."""


@attrs.frozen
class Scenario:
    kind: str = "steady"
    viewers: int = 100
    seconds: float = 60.0
    streams: tuple[str, ...] = ("demo",)
    join_over: float = 5.0
    rise: float = 10.0
    fall: float = 10.0
    zipf: float = 0.0
    churn: float = 0.0
    scale: float = 1.0
    #: Seconds buffered before a viewer starts playing.
    startup: float = 2.0

    @classmethod
    def from_json(cls, data: Any) -> Scenario:
        if not isinstance(data, dict):
            raise ScenarioError("a scenario is a JSON object")
        fields = {f.name: f for f in attrs.fields(cls)}
        values: dict[str, Any] = {}
        for name, value in data.items():
            if name not in fields:
                raise ScenarioError("unknown scenario field %r" % (name,))
            if name == "streams":
                if not isinstance(value, list) or not value or not all(isinstance(s, str) and s for s in value):
                    raise ScenarioError("streams: a list of stream ids")
                if len(value) > 10_000:
                    raise ScenarioError("streams: at most 10000")
                value = tuple(value)
            elif name == "kind":
                if value not in KINDS:
                    raise ScenarioError("kind: one of %s" % (", ".join(KINDS),))
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ScenarioError("%s: a number" % (name,))
            values[name] = value
        scenario = cls(**values)
        scenario.check()
        return scenario

    def to_json(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["streams"] = list(self.streams)
        return data

    def check(self) -> None:
        if not 0 < self.seconds <= 24 * 3600:
            raise ScenarioError("seconds: more than 0, at most a day")
        if not 0 <= self.viewers * self.scale <= MAX_VIEWERS:
            raise ScenarioError("viewers x scale: at most %d" % (MAX_VIEWERS,))
        for name in ("join_over", "rise", "fall", "zipf", "startup"):
            if getattr(self, name) < 0:
                raise ScenarioError("%s: not negative" % (name,))
        if not 0 <= self.churn < 1:
            raise ScenarioError("churn: a share of the viewers per second, under 1")
        if self.kind == "ramp" and self.rise + self.fall > self.seconds:
            raise ScenarioError("ramp: rise and fall take longer than the run")

    def share(self, index: int, of: int) -> Scenario:
        """Agent ``index`` of ``of``'s part: the viewers split as evenly as they go."""
        total = round(self.viewers * self.scale)
        mine = total // of + (1 if index < total % of else 0)
        return attrs.evolve(self, viewers=mine, scale=1.0)

    @property
    def total(self) -> int:
        return round(self.viewers * self.scale)

    def wanted(self, t: float) -> int:
        """Viewers watching ``t`` seconds into the run."""
        n = self.total
        if t >= self.seconds:
            return 0
        if self.kind in ("steady", "herd"):
            spread = self.join_over
            return n if spread <= 0 or t >= spread else int(n * t / spread)
        # The watermelon: up, held, down as the video ends.
        if t < self.rise:
            return int(n * t / self.rise) if self.rise > 0 else n
        left = self.seconds - t
        if left < self.fall:
            return int(n * left / self.fall)
        return n

    def picker(self, rng: random.Random) -> Any:
        """A function that picks a stream for each new viewer (by Zipf popularity if ``zipf``)."""
        streams = list(self.streams)
        if self.kind == "herd" or len(streams) == 1:
            return lambda: streams[0]
        if self.zipf <= 0:
            return lambda: rng.choice(streams)
        weights = [1.0 / (rank ** self.zipf) for rank in range(1, len(streams) + 1)]
        return lambda: rng.choices(streams, weights)[0]
