"""
The embedded registry's list of videos, on a Clock: it pages like etcd's
(tests/registry_paging.py), and a page costs the page, not the registry.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fbstream.registry.memory import MemoryRegistry

from .registry_paging import page_through, record, video_id
from .test_records import state


class Counted(dict[str, Any]):
    """One of the registry's tables, counting the entries read from it."""

    reads = 0

    def __getitem__(self, key: str) -> Any:
        Counted.reads += 1
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        Counted.reads += 1
        return super().get(key, default)


class MemoryPagingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = MemoryRegistry(self.clock, 10)

    def test_pages_through_every_video_once_while_more_are_made(self) -> None:
        self.successResultOf(page_through(self.registry))

    def test_a_page_reads_only_its_own_videos(self) -> None:
        for n in range(20_000):
            self.registry.create_video(video_id(n), record(n))
        claim = self.successResultOf(self.registry.claim(video_id(10_000), "enc-a", "x"))
        self.successResultOf(self.registry.write_state(claim, state(1)))
        self.registry._videos = Counted(self.registry._videos)
        self.registry._states = Counted(self.registry._states)
        for after, first in ((None, 19_999), (video_id(10_025), 10_024), (video_id(50), 49)):
            Counted.reads = 0
            page = self.successResultOf(self.registry.list_videos(50, after))
            self.assertEqual([v.record.id for v in page.videos], [video_id(n) for n in range(first, first - 50, -1)])
            with_state = 1 if first >= 10_000 > first - 50 else 0
            self.assertEqual(sum(v.state is not None for v in page.videos), with_state, after)
            self.assertEqual(Counted.reads, 50 + 50, after)  # its records, and their states
