"""
A consistent-hash ring with virtual nodes: the PoP's proxy layer shards URLs
over its cache hosts with it (and the dc-proxy will pick encoders with it).
Adding or removing one node moves only about 1/n of the keys.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


def _point(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class HashRing(Generic[T]):
    def __init__(self, nodes: Sequence[T], names: Sequence[str] | None = None, vnodes: int = 160) -> None:
        if not nodes:
            raise ValueError("a hash ring needs at least one node")
        self.nodes = list(nodes)
        names = list(names) if names is not None else [str(n) for n in nodes]
        points = []
        for index, name in enumerate(names):
            for v in range(vnodes):
                points.append((_point(b"%s#%d" % (name.encode(), v)), index))
        points.sort()
        self._keys = [p for p, _ in points]
        self._owners = [i for _, i in points]

    def walk(self, key: bytes) -> Iterator[T]:
        """The nodes for ``key`` in ring order: the owner first, then each fallback once."""
        start = bisect.bisect(self._keys, _point(key)) % len(self._keys)
        seen: set[int] = set()
        for i in range(len(self._keys)):
            owner = self._owners[(start + i) % len(self._keys)]
            if owner not in seen:
                seen.add(owner)
                yield self.nodes[owner]
                if len(seen) == len(self.nodes):
                    return
