"""
The registry's contract, run against both backends: the embedded one on a
real clock, and a real etcd server through its JSON gateway.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import reactor

from fbstream.endings import EndKind
from fbstream.registry import Fenced, Owned, Ownership
from fbstream.registry.etcd import EtcdRegistry
from fbstream.registry.memory import MemoryRegistry

from ..registry_paging import page_through
from .conftest import eventually, sleep

LEASE = 2.0


@pytest.fixture(params=["embedded", "etcd"])
def registry(request):
    if request.param == "embedded":
        yield MemoryRegistry(reactor, LEASE)
        return
    server = request.getfixturevalue("etcd")
    reg = EtcdRegistry(reactor, [server.url], prefix="/t%s" % (os.urandom(4).hex(),), lease_seconds=LEASE)
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
    yield registry.write_state(first, {"next": 5})
    assert (yield registry.read_state("s1")) == {"next": 5}
    # Released: the next owner gets a higher fence, and the old claim is fenced.
    yield registry.release(first)
    assert (yield registry.owner("s1")) is None
    second = yield registry.claim("s1", "enc-b", "tcp:127.0.0.1:2")
    assert second.owner.fence == 2
    with pytest.raises(Fenced):
        yield registry.write_state(first, {"next": 1})
    with pytest.raises(Fenced):
        yield registry.renew(first)
    assert (yield registry.read_state("s1")) == {"next": 5}
    # Another stream is independent.
    other = yield registry.claim("s2", "enc-a", "tcp:127.0.0.1:1")
    assert other.owner.fence == 1


@pytest_twisted.inlineCallbacks
def test_lease_lapses_without_renewal(registry):
    claim = yield registry.claim("s1", "enc-a", "x")
    yield sleep(LEASE + 1.5)
    assert (yield registry.owner("s1")) is None
    with pytest.raises(Fenced):
        yield registry.write_state(claim, {})
    taken = yield registry.claim("s1", "enc-b", "y")
    assert taken.owner.fence == 2
    # Releasing the lapsed claim is no error, and leaves the new owner be.
    yield registry.release(claim)
    assert (yield registry.owner("s1")) == taken.owner


@pytest_twisted.inlineCallbacks
def test_ownership_renews_and_reports_loss(registry):
    claim = yield registry.claim("s1", "enc-a", "x")
    lost = []
    holder = Ownership(registry, claim, reactor, lost.append)
    try:
        yield sleep(LEASE * 2)
        assert not lost and (yield registry.owner("s1")) == claim.owner
        yield holder.write({"n": 1})
        # Fenced from outside (as if a partition let the lease lapse and
        # another encoder claim): the holder finds out and reports it.
        yield registry.release(claim)
        yield registry.claim("s1", "enc-b", "y")
        with pytest.raises(Fenced):
            yield holder.write({"n": 2})
        [ending] = lost
        assert ending.kind is EndKind.OWNERSHIP_LOST and ending.detail == "another encoder took over stream s1"
    finally:
        holder.stop()


@pytest_twisted.inlineCallbacks
def test_api_records(registry):
    yield registry.create_video("v1", {"id": "v1", "dc": "dc1", "ended": False})
    yield registry.create_video("v2", {"id": "v2", "dc": "dc1", "ended": False})
    claim = yield registry.claim("v1", "enc-a", "x")
    record = yield registry.write_state(claim, {"status": "live"})
    assert record == {"id": "v1", "dc": "dc1", "ended": False}
    yield registry.put_video("v1", dict(record, ended=True))
    record = yield registry.write_state(claim, {"status": "live"})
    assert record["ended"] is True
    listing = (yield registry.list_videos(10)).videos
    assert [v["id"] for v in listing] == ["v2", "v1"]
    assert listing[1]["state"] == {"status": "live"} and listing[1]["owner"]
    assert listing[0]["state"] is None and listing[0]["owner"] is None
    assert (yield registry.get_video("nope")) is None


@pytest_twisted.inlineCallbacks
def test_videos_page_newest_first(registry):
    yield page_through(registry)


@pytest_twisted.inlineCallbacks
def test_a_watch_hears_records_until_stopped(registry):
    seen = []
    stop = registry.watch_videos(lambda stream, record: seen.append((stream, record["ended"])))
    yield sleep(0.2)  # etcd's watch is open before the first write
    yield registry.create_video("v1", {"id": "v1", "ended": False})
    yield registry.put_video("v1", {"id": "v1", "ended": True})
    yield eventually(lambda: len(seen) == 2, timeout=5, what="two records")
    assert seen == [("v1", False), ("v1", True)]
    stop()
    yield registry.create_video("v2", {"id": "v2", "ended": False})
    yield sleep(0.3)
    assert seen == [("v1", False), ("v1", True)]


@pytest_twisted.inlineCallbacks
def test_etcd_unreachable_is_a_clear_error():
    from fbstream.registry.base import RegistryUnavailable

    from .conftest import free_port

    reg = EtcdRegistry(reactor, ["http://127.0.0.1:%d" % (free_port(),)], lease_seconds=LEASE, timeout=1)
    with pytest.raises(RegistryUnavailable):
        yield reg.claim("s1", "enc-a", "x")
    yield reg.close()
