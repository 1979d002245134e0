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


class Copied:
    """A value that counts how often it is deep-copied."""

    copies = 0

    def __deepcopy__(self, memo: dict[int, Any]) -> Copied:
        Copied.copies += 1
        return self


class MemoryPagingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = MemoryRegistry(self.clock, 10)

    def test_pages_through_every_video_once_while_more_are_made(self) -> None:
        self.successResultOf(page_through(self.registry))

    def test_a_page_copies_only_its_own_videos(self) -> None:
        for n in range(20_000):
            self.registry.create_video(video_id(n), dict(record(n), mark=Copied()))
        claim = self.successResultOf(self.registry.claim(video_id(10_000), "enc-a", "x"))
        self.successResultOf(self.registry.write_state(claim, {"mark": Copied()}))
        for after, first in ((None, 19_999), (video_id(10_025), 10_024), (video_id(50), 49)):
            Copied.copies = 0
            page = self.successResultOf(self.registry.list_videos(50, after))
            self.assertEqual([v["id"] for v in page.videos], [video_id(n) for n in range(first, first - 50, -1)])
            with_state = 1 if first >= 10_000 > first - 50 else 0
            self.assertEqual(Copied.copies, 50 + with_state, after)
