"""
Token buckets, the one rate limit every layer uses (pure Python: the
sans-IO protocol cores use it too). ``rate`` tokens a second, at most
``burst`` saved up; each event takes one.
"""

from __future__ import annotations

from collections import OrderedDict


class TokenBucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.at: float | None = None  # full until the first take

    def take(self, now: float) -> float:
        """0 if a token was taken, else the seconds until one will be there."""
        if self.at is not None:
            self.tokens = min(self.burst, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class KeyedBuckets:
    """A bucket per key (a client address, an API caller), the least recently used forgotten past ``max_keys``."""

    def __init__(self, rate: float, burst: float, max_keys: int = 10_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, key: str, now: float) -> float:
        bucket = self._buckets.pop(key, None) or TokenBucket(self.rate, self.burst)
        self._buckets[key] = bucket
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return bucket.take(now)

    def __len__(self) -> int:
        return len(self._buckets)
