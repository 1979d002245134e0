"""
One paging scenario for every registry backend, so that they all page the
same way: the unit tests run it on the memory registry and on EtcdRegistry
over a fake gateway, tests/integration/test_registry.py on a real etcd.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks

from fbstream.registry.records import VideoRecord

from .test_records import state


def video_id(n: int) -> str:
    return "%016x" % (n,)


def record(n: int) -> VideoRecord:
    return VideoRecord(video_id(n), "dc1", 1000.0 + n, "video %d" % (n,))


@inlineCallbacks
def page_through(registry: Any) -> Any:
    """
    25 videos, listed 10 at a time while more are created between pages:
    every video that existed at the start comes once, newest first, with no
    gap; one ended meanwhile keeps its place; the newer ones come only from
    a new start.
    """
    made = [video_id(n) for n in range(25)]
    for n in range(25):
        yield registry.create_video(video_id(n), record(n))
    claim = yield registry.claim(made[5], "enc-a", "tcp:127.0.0.1:1")
    yield registry.write_state(claim, state(7))

    seen: list[str] = []
    sizes, after, late = [], None, 100
    while True:
        page = yield registry.list_videos(10, after)
        seen += [v.record.id for v in page.videos]
        sizes.append((len(page.videos), page.more))
        if not page.more:
            break
        after = page.videos[-1].record.id
        # Between pages: a new video, and the end of an old one.
        yield registry.create_video(video_id(late), record(late))
        late += 1
        if len(sizes) == 1:
            ended = yield registry.get_video(made[3])
            yield registry.put_video(made[3], ended.end(2000.0))
    assert sizes == [(10, True), (10, True), (5, False)], sizes
    assert seen == made[::-1], seen

    page = yield registry.list_videos(5, made[8])
    assert [v.record.id for v in page.videos] == made[7:2:-1] and page.more is True, page
    ended, live = page.videos[-1], page.videos[2]
    assert ended.record.ended is True and ended.state is None and ended.owner is None, ended
    assert live.state == state(7) and live.owner == claim.owner, live

    # A page that ends exactly at the oldest video says there is no more.
    page = yield registry.list_videos(5, made[5])
    assert ([v.record.id for v in page.videos], page.more) == (made[4::-1], False), page
    page = yield registry.list_videos(5, made[0])
    assert (page.videos, page.more) == ([], False), page

    # From the start (or from a cursor that names no video): the newest first.
    newest = [video_id(n) for n in range(late - 1, 99, -1)] + made[:-4:-1]
    for cursor in (None, video_id(999)):
        page = yield registry.list_videos(len(newest), cursor)
        assert ([v.record.id for v in page.videos], page.more) == (newest, True), page
