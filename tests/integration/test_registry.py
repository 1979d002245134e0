"""
The registry's contract, run against both backends: the embedded one on a
real clock, and a real etcd server through its JSON gateway.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from fbstream.endings import Ending, EndKind
from fbstream.registry import Fenced, Owned, Ownership, VideoRecord, VideoState, VideoStatus
from fbstream.registry.etcd import EtcdRegistry, _value
from fbstream.registry.memory import MemoryRegistry
from tests.test_records import CREATED, ENDED, STATE, state

from ..registry_paging import page_through
from .conftest import eventually, sleep

LEASE = 2.0
#: The reactor as EtcdRegistry takes it, typed by treq's private name for
#: what its Agent needs (build_role passes it so too).
TREQ_REACTOR: Any = reactor


@pytest.fixture(params=["embedded", "etcd"])
def registry(request):
    if request.param == "embedded":
        yield MemoryRegistry(reactor, LEASE)
        return
    server = request.getfixturevalue("etcd")
    reg = EtcdRegistry(TREQ_REACTOR, [server.url], prefix="/t%s" % (os.urandom(4).hex(),), lease_seconds=LEASE)
    yield reg
    pytest_twisted.blockon(reg.close())


@pytest_twisted.inlineCallbacks
def test_one_owner_and_rising_fences(registry):
    first = yield registry.claim("s1", "enc-a", "tcp:127.0.0.1:1")
    assert first.owner.fence == 1
    with pytest.raises(Owned) as info:
        yield registry.claim("s1", "enc-b", "tcp:127.0.0.1:2")
    assert info.value.owner.encoder == "enc-a"
    owner = yield registry.owner("s1")
    assert owner == first.owner
    yield registry.write_state(first, state(5))
    assert (yield registry.read_state("s1")) == state(5)
    # Released: the next owner gets a higher fence, and the old claim is fenced.
    yield registry.release(first)
    assert (yield registry.owner("s1")) is None
    second = yield registry.claim("s1", "enc-b", "tcp:127.0.0.1:2")
    assert second.owner.fence == 2
    with pytest.raises(Fenced):
        yield registry.write_state(first, state(1))
    with pytest.raises(Fenced):
        yield registry.renew(first)
    assert (yield registry.read_state("s1")) == state(5)
    # Another stream is independent.
    other = yield registry.claim("s2", "enc-a", "tcp:127.0.0.1:1")
    assert other.owner.fence == 1


@pytest_twisted.inlineCallbacks
def test_lease_lapses_without_renewal(registry):
    claim = yield registry.claim("s1", "enc-a", "x")
    yield sleep(LEASE + 1.5)
    assert (yield registry.owner("s1")) is None
    with pytest.raises(Fenced):
        yield registry.write_state(claim, state(0))
    taken = yield registry.claim("s1", "enc-b", "y")
    assert taken.owner.fence == 2
    # Releasing the lapsed claim is no error, and leaves the new owner be.
    yield registry.release(claim)
    assert (yield registry.owner("s1")) == taken.owner


@pytest_twisted.inlineCallbacks
def test_ownership_renews_and_reports_loss(registry):
    claim = yield registry.claim("s1", "enc-a", "x")
    lost: list[Ending] = []
    holder = Ownership(registry, claim, reactor, lost.append)
    try:
        yield sleep(LEASE * 2)
        assert not lost and (yield registry.owner("s1")) == claim.owner
        yield holder.write(state(1))
        # Fenced from outside (as if a partition let the lease lapse and
        # another encoder claim): the holder finds out and reports it.
        yield registry.release(claim)
        yield registry.claim("s1", "enc-b", "y")
        with pytest.raises(Fenced):
            yield holder.write(state(2))
        [ending] = lost
        assert ending.kind is EndKind.OWNERSHIP_LOST and ending.detail == "another encoder took over stream s1"
    finally:
        holder.stop()


@pytest_twisted.inlineCallbacks
def test_api_records(registry):
    yield registry.create_video("v1", VideoRecord("v1", "dc1", 1000.0))
    yield registry.create_video("v2", VideoRecord("v2", "dc1", 1001.0))
    claim = yield registry.claim("v1", "enc-a", "x")
    record = yield registry.write_state(claim, state(3))
    assert record == VideoRecord("v1", "dc1", 1000.0)
    yield registry.put_video("v1", record.end(1002.0))
    record = yield registry.write_state(claim, state(4))
    assert record.ended is True and record.ended_at == 1002.0
    listing = (yield registry.list_videos(10)).videos
    assert [v.record.id for v in listing] == ["v2", "v1"]
    assert listing[1].state == state(4) and listing[1].owner == claim.owner
    assert listing[0].state is None and listing[0].owner is None
    assert (yield registry.get_video("nope")) is None


@pytest_twisted.inlineCallbacks
def test_videos_page_newest_first(registry):
    yield page_through(registry)


@pytest_twisted.inlineCallbacks
def test_a_watch_hears_records_until_stopped(registry):
    seen = []
    stop = registry.watch_videos(lambda stream, record: seen.append((stream, record.ended)))
    yield sleep(0.2)  # etcd's watch is open before the first write
    yield registry.create_video("v1", VideoRecord("v1", "dc1", 1000.0))
    yield registry.put_video("v1", VideoRecord("v1", "dc1", 1000.0).end(1001.0))
    yield eventually(lambda: len(seen) == 2, timeout=5, what="two records")
    assert seen == [("v1", False), ("v1", True)]
    stop()
    yield registry.create_video("v2", VideoRecord("v2", "dc1", 1002.0))
    yield sleep(0.3)
    assert seen == [("v1", False), ("v1", True)]


@pytest_twisted.inlineCallbacks
def test_etcd_holds_the_json_older_versions_wrote(etcd):
    """What the dicts wrote reads back as records, and records write those very bytes."""
    registry = EtcdRegistry(TREQ_REACTOR, [etcd.url], prefix="/t%s" % (os.urandom(4).hex(),), lease_seconds=LEASE)
    try:
        yield registry._put(registry._key("videos", "0123456789abcdef"), CREATED)
        record = yield registry.get_video("0123456789abcdef")
        assert record == VideoRecord("0123456789abcdef", "dc1", 1000000.5, "my show")
        yield registry.put_video("0123456789abcdef", record.end(1000060.25))
        kv = yield registry._get(registry._key("videos", "0123456789abcdef"))
        assert _value(kv) == ENDED.encode()
        claim = yield registry.claim("0123456789abcdef", "enc-a", "tcp:127.0.0.1:9001")
        yield registry.write_state(claim, VideoState.from_json(STATE))
        kv = yield registry._get(registry._key("state", "0123456789abcdef"))
        assert _value(kv) == STATE.encode()
        [listed] = (yield registry.list_videos(10)).videos
        assert listed.record.ended_at == 1000060.25 and listed.state.status is VideoStatus.INTERRUPTED
        assert listed.owner == claim.owner
    finally:
        yield registry.close()


@pytest_twisted.inlineCallbacks
def test_etcd_unreachable_is_a_clear_error():
    from fbstream.registry.base import RegistryUnavailable

    from .conftest import free_port

    reg = EtcdRegistry(TREQ_REACTOR, ["http://127.0.0.1:%d" % (free_port(),)], lease_seconds=LEASE, timeout=1)
    with pytest.raises(RegistryUnavailable):
        yield reg.claim("s1", "enc-a", "x")
    yield reg.close()
