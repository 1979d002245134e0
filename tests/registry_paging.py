"""
One paging scenario for every registry backend, so that they all page the
same way: the unit tests run it on the memory registry and on EtcdRegistry
over a fake gateway, tests/integration/test_registry.py on a real etcd.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks


def video_id(n: int) -> str:
    return "%016x" % (n,)


def record(n: int) -> dict[str, Any]:
    return {"id": video_id(n), "dc": "dc1", "created": 1000.0 + n, "title": "video %d" % (n,), "ended": False}


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
    yield registry.write_state(claim, {"status": "live"})

    seen: list[str] = []
    sizes, after, late = [], None, 100
    while True:
        page = yield registry.list_videos(10, after)
        seen += [v["id"] for v in page.videos]
        sizes.append((len(page.videos), page.more))
        if not page.more:
            break
        after = page.videos[-1]["id"]
        # Between pages: a new video, and the end of an old one.
        yield registry.create_video(video_id(late), record(late))
        late += 1
        if len(sizes) == 1:
            ended = yield registry.get_video(made[3])
            yield registry.put_video(made[3], dict(ended, ended=True))
    assert sizes == [(10, True), (10, True), (5, False)], sizes
    assert seen == made[::-1], seen

    page = yield registry.list_videos(5, made[8])
    assert [v["id"] for v in page.videos] == made[7:2:-1] and page.more is True, page
    ended, live = page.videos[-1], page.videos[2]
    assert ended["ended"] is True and ended["state"] is None and ended["owner"] is None, ended
    assert live["state"] == {"status": "live"} and claim.owner.nonce in live["owner"], live

    # A page that ends exactly at the oldest video says there is no more.
    page = yield registry.list_videos(5, made[5])
    assert ([v["id"] for v in page.videos], page.more) == (made[4::-1], False), page
    page = yield registry.list_videos(5, made[0])
    assert (page.videos, page.more) == ([], False), page

    # From the start (or from a cursor that names no video): the newest first.
    newest = [video_id(n) for n in range(late - 1, 99, -1)] + made[:-4:-1]
    for cursor in (None, video_id(999)):
        page = yield registry.list_videos(len(newest), cursor)
        assert ([v["id"] for v in page.videos], page.more) == (newest, True), page
