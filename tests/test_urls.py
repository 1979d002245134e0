"""The playback URL contract: what the encoder names, the caches let through; nothing else."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fbstream.encoder.store import Period
from fbstream.live.urls import INIT, PLAYBACK_PATH


def test_every_period_init_segment_passes_the_caches():
    for index in (0, 1, 2, 17, 999_999):
        name = Period(index, 0, 1).init_name()
        assert PLAYBACK_PATH.match(b"/live/cam/360p/" + name.encode()), name
        match = INIT.match(name.encode())
        assert match and int(match.group(1) or 0) == index


def test_other_paths_do_not():
    for path in (b"/live/cam/360p/init-.mp4", b"/live/cam/360p/init-1234567.mp4", b"/live/cam/360p/init-x.mp4",
                 b"/live/cam/360p/init.mp4/", b"/live/../360p/1.m4s", b"/live/cam/360p/-1.m4s",
                 b"/live/cam/a/b/init.mp4", b"/live/cam/360p/1.m4s?x=1"):
        assert not PLAYBACK_PATH.match(path), path


@given(st.binary(max_size=200))
def test_nothing_that_passes_climbs_out_of_live(path):
    if PLAYBACK_PATH.match(path):
        assert path.startswith(b"/live/") and b"/../" not in path and b"\n" not in path
