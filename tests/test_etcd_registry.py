"""
EtcdRegistry through treq's StubTreq, against an in-memory fake of etcd's v3
JSON gateway (tests/etcd_gateway.py) on a Clock: ownership and its fencing,
leases lapsing, the list of videos a page at a time, the watch of the API's
records across a dropped stream, and what an unwell gateway makes of each.
"""

from __future__ import annotations

import base64
from typing import Any

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fbstream.endings import Ending, EndKind
from fbstream.registry import Fenced, Owned, Ownership, VideoRecord
from fbstream.registry.base import RegistryUnavailable
from fbstream.registry.etcd import EtcdRegistry, _VideoWatch

from .etcd_gateway import FakeEtcd
from .registry_paging import page_through, record, video_id
from .test_records import state

LEASE = 6.0
TIMEOUT = 3.0


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class EtcdRegistryTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000)
        self.etcd = FakeEtcd(self.clock)
        self.stub = StubTreq(self.etcd)
        # Only a clock: the StubTreq does the HTTP that treq's reactor type is for.
        self.registry = EtcdRegistry(self.clock, ["http://etcd-a:2379", "http://etcd-b:2379"],  # type: ignore[arg-type]
                                     prefix="/t", lease_seconds=LEASE, timeout=TIMEOUT, http=self.stub)

    def call(self, d: Any) -> Any:
        return self.successResultOf(d)

    def refused(self, d: Any, *errors: type[Exception]) -> Any:
        return self.failureResultOf(d, *errors).value


class OwnershipTests(EtcdRegistryTestCase):
    def test_one_owner_and_rising_fences(self) -> None:
        first = self.call(self.registry.claim("s1", "enc-a", "tcp:127.0.0.1:1"))
        self.assertEqual(first.owner.fence, 1)
        owned = self.refused(self.registry.claim("s1", "enc-b", "tcp:127.0.0.1:2"), Owned)
        self.assertEqual(owned.owner, first.owner)
        # The refused claim's lease was revoked: only the owner's is left.
        self.assertEqual(list(self.etcd.leases), [int(first.lease)])
        self.assertEqual(self.call(self.registry.owner("s1")), first.owner)
        self.call(self.registry.write_state(first, state(5)))

        self.call(self.registry.release(first))
        self.assertIsNone(self.call(self.registry.owner("s1")))
        self.assertEqual(self.etcd.leases, {})
        second = self.call(self.registry.claim("s1", "enc-b", "tcp:127.0.0.1:2"))
        self.assertEqual(second.owner.fence, 2)
        self.refused(self.registry.write_state(first, state(1)), Fenced)
        self.refused(self.registry.renew(first), Fenced)
        self.assertEqual(self.call(self.registry.read_state("s1")), state(5))
        # Releasing the old claim again touches nothing of the new owner's.
        self.call(self.registry.release(first))
        self.assertEqual(self.call(self.registry.owner("s1")), second.owner)
        self.assertEqual(self.call(self.registry.claim("s2", "enc-a", "x")).owner.fence, 1)

    def test_a_lease_lapses_on_the_clock_unless_renewed(self) -> None:
        claim = self.call(self.registry.claim("s1", "enc-a", "x"))
        for _ in range(4):
            self.clock.advance(LEASE - 1)
            self.call(self.registry.renew(claim))
        self.assertEqual(self.call(self.registry.owner("s1")), claim.owner)
        self.clock.advance(LEASE)
        self.assertIsNone(self.call(self.registry.owner("s1")))
        self.refused(self.registry.renew(claim), Fenced)
        self.refused(self.registry.write_state(claim, state()), Fenced)
        taken = self.call(self.registry.claim("s1", "enc-b", "y"))
        self.assertEqual(taken.owner.fence, 2)
        # The lapsed claim's release is no error and leaves the new owner be.
        self.call(self.registry.release(claim))
        self.assertEqual(self.call(self.registry.owner("s1")), taken.owner)

    def test_ownership_renews_on_the_clock_and_reports_a_takeover(self) -> None:
        claim = self.call(self.registry.claim("s1", "enc-a", "x"))
        lost: list[Ending] = []
        holder = Ownership(self.registry, claim, self.clock, lost.append)
        self.clock.pump([LEASE / 3] * 12)
        self.assertEqual((lost, self.call(self.registry.owner("s1"))), ([], claim.owner))
        self.assertEqual(sum(path == "/v3/lease/keepalive" for path, _ in self.etcd.requests), 12)
        # Another encoder takes over once the lease is gone (a partition).
        self.etcd.revoke({"ID": claim.lease})
        self.call(self.registry.claim("s1", "enc-b", "y"))
        self.clock.advance(LEASE / 3)
        self.assertEqual(lost, [Ending(EndKind.OWNERSHIP_LOST, "the lease on stream s1 lapsed")])
        self.assertFalse(holder._loop.running)

    def test_a_state_write_reads_the_record_in_the_same_step(self) -> None:
        made = VideoRecord("v1", "dc1", 1000.0)
        self.call(self.registry.create_video("v1", made))
        claim = self.call(self.registry.claim("v1", "enc-a", "x"))
        self.assertEqual(self.call(self.registry.write_state(claim, state(1))), made)
        self.call(self.registry.put_video("v1", made.end(1010.0)))
        self.assertEqual(self.call(self.registry.write_state(claim, state(2))), made.end(1010.0))
        self.assertEqual(self.call(self.registry.read_state("v1")), state(2))
        self.assertIsNone(self.call(self.registry.get_video("nope")))
        other = self.call(self.registry.claim("v2", "enc-a", "x"))
        self.assertIsNone(self.call(self.registry.write_state(other, state())))


class PagingTests(EtcdRegistryTestCase):
    def test_pages_through_every_video_once_while_more_are_made(self) -> None:
        self.call(page_through(self.registry))

    def seed(self, count: int) -> None:
        """Videos written straight into etcd, as many API servers would have."""
        for n in range(count):
            self.etcd.put({"key": b64("/t/videos/" + video_id(n)), "value": b64(record(n).to_json())})

    def test_a_page_reads_only_its_own_videos(self) -> None:
        self.seed(20_000)
        self.call(self.registry.create_video("x", VideoRecord("x", "dc1", 999.0)))
        claim = self.call(self.registry.claim(video_id(10_000), "enc-a", "x"))
        self.call(self.registry.write_state(claim, state(3)))
        self.etcd.requests.clear()
        page = self.call(self.registry.list_videos(50, video_id(10_025)))
        wanted = [video_id(n) for n in range(10_024, 9_974, -1)]
        self.assertEqual(([v.record.id for v in page.videos], page.more), (wanted, True))
        self.assertEqual(page.videos[24].state, state(3))
        # The cursor's key, one range of 50, and the page's states and owners.
        self.assertEqual([path for path, _ in self.etcd.requests], ["/v3/kv/range", "/v3/kv/range", "/v3/kv/txn"])
        (_, cursor), (_, listing), (_, txn) = self.etcd.requests
        self.assertEqual(cursor, {"key": b64("/t/videos/" + video_id(10_025))})
        self.assertEqual(int(listing["limit"]), 50)
        read = [base64.b64decode(op["request_range"]["key"]).decode() for op in txn["success"]]
        self.assertEqual(read, ["/t/%s/%s" % (kind, v) for v in wanted for kind in ("state", "owner")])

    def test_a_long_page_reads_its_states_in_transactions_etcd_accepts(self) -> None:
        self.seed(1_500)
        self.etcd.requests.clear()
        page = self.call(self.registry.list_videos(1000))
        self.assertEqual(len(page.videos), 1000)
        txns = [body for path, body in self.etcd.requests if path == "/v3/kv/txn"]
        self.assertEqual([len(t["success"]) for t in txns], [128] * 15 + [80])


class WatchTests(EtcdRegistryTestCase):
    def test_the_watch_reopens_where_it_dropped(self) -> None:
        seen: list[tuple[str, bool]] = []
        stop = self.registry.watch_videos(lambda stream, rec: seen.append((stream, rec.ended)))
        self.call(self.registry.create_video("v1", VideoRecord("v1", "dc1", 1000.0)))
        self.stub.flush()
        self.assertEqual(seen, [("v1", False)])

        self.etcd.drop_watches()
        self.stub.flush()
        self.call(self.registry.put_video("v1", VideoRecord("v1", "dc1", 1000.0).end(1001.0)))
        self.call(self.registry.create_video("v2", VideoRecord("v2", "dc1", 1002.0)))
        self.stub.flush()
        self.assertEqual(seen, [("v1", False)])
        self.clock.advance(_VideoWatch.RETRY_SECONDS)
        self.stub.flush()
        # Nothing missed and nothing twice, from the next member.
        self.assertEqual(seen, [("v1", False), ("v1", True), ("v2", False)])
        watch = [body for path, body in self.etcd.requests if path == "/v3/watch"][-1]
        self.assertEqual(int(watch["create_request"]["start_revision"]), 3)
        self.assertEqual(self.registry._next, 1)

        stop()
        self.stub.flush()
        self.assertEqual(self.etcd.watches, [])  # its connection is closed
        self.call(self.registry.create_video("v3", VideoRecord("v3", "dc1", 1003.0)))
        self.stub.flush()
        self.assertEqual(len(seen), 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class UnavailableTests(EtcdRegistryTestCase):
    def test_a_member_that_errs_is_unavailable(self) -> None:
        self.etcd.failing = 503
        for d in (self.registry.claim("s1", "enc-a", "x"), self.registry.list_videos(10),
                  self.registry.get_video("v1"), self.registry.create_video("v1", VideoRecord("v1", "dc1", 1000.0))):
            self.assertIn("etcd answered 503", str(self.refused(d, RegistryUnavailable)))

    def test_the_next_member_answers_for_one_that_drops(self) -> None:
        self.etcd.broken["etcd-a"] = "drop"
        self.call(self.registry.create_video("v1", VideoRecord("v1", "dc1", 1000.0)))
        self.assertEqual(self.registry._next, 1)
        self.etcd.broken["etcd-b"] = "drop"
        error = self.refused(self.registry.get_video("v1"), RegistryUnavailable)
        self.assertIn("no etcd member answered", str(error))
        del self.etcd.broken["etcd-a"]
        self.assertEqual(self.call(self.registry.get_video("v1")), VideoRecord("v1", "dc1", 1000.0))

    def test_a_member_that_never_answers_times_out(self) -> None:
        self.etcd.broken.update({"etcd-a": "hang", "etcd-b": "hang"})
        d = self.registry.list_videos(10)
        self.assertNoResult(d)
        self.clock.advance(TIMEOUT)
        self.assertNoResult(d)  # now asking the second member
        self.clock.advance(TIMEOUT)
        self.refused(d, RegistryUnavailable)
        self.assertEqual([path for path, _ in self.etcd.requests], ["/v3/kv/range"] * 2)
