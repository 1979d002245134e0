"""A simulated viewer against a simulated server: when it asks, what it plays, when it stalls, what it picks."""

from __future__ import annotations

import random

import pytest

from fbstream.load.mpd import ManifestError, parse
from fbstream.load.viewer import INIT, MANIFEST, MEDIA, Request, Settings, Viewer

ORIGIN = 1_794_990_400.0  # the manifest's availabilityStartTime, 2026-11-18T08:26:40Z
MPD = b"""<?xml version="1.0" encoding="utf-8"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="dynamic" availabilityStartTime="2026-11-18T08:26:40Z"
     minimumUpdatePeriod="PT2S"><Period id="0" start="PT0S">
<AdaptationSet contentType="video"><SegmentTemplate timescale="1000" duration="1000" startNumber="1"
 initialization="$RepresentationID$/init.mp4" media="$RepresentationID$/$Number$.m4s" />
<Representation id="720p" bandwidth="2500000" height="720" /><Representation id="240p" bandwidth="300000" height="240" />
</AdaptationSet>
<AdaptationSet contentType="audio"><SegmentTemplate timescale="48000" duration="48000" startNumber="1"
 initialization="$RepresentationID$/init.mp4" media="$RepresentationID$/$Number$.m4s" />
<Representation id="audio" bandwidth="64000" /></AdaptationSet></Period></MPD>"""


def test_the_manifest_is_read_once_per_version() -> None:
    manifest = parse(MPD)
    assert manifest.dynamic and manifest.origin == ORIGIN
    video, audio = manifest.tracks
    assert [r.id for r in video.renditions] == ["240p", "720p"]  # lowest first
    assert video.renditions[1].media(video, 7) == "720p/7.m4s" and audio.seconds == 1.0
    assert manifest.newest_complete(video, ORIGIN + 10.5) == 10
    assert parse(MPD) is manifest


@pytest.mark.parametrize("body", [b"", b"<html/>", b"<MPD xmlns='urn:mpeg:dash:schema:mpd:2011'/>",
                                  MPD.replace(b"$Number$", b"$Time$"), MPD.replace(b'duration="1000"', b'duration="0"')])
def test_a_manifest_it_cannot_play_is_an_error(body: bytes) -> None:
    with pytest.raises(ManifestError):
        parse(body)


class Server:
    """Answers at once, each segment as big as its rendition's bitrate says, over a link of ``rate`` bits/s."""

    def __init__(self, rate: float = 50e6, late: dict[int, float] | None = None) -> None:
        self.rate = rate
        self.late = late or {}
        self.asked: list[Request] = []

    def run(self, viewer: Viewer, start: float, until: float) -> None:
        now = start
        action: Request | float = viewer.start(now)
        while now < until:
            if not isinstance(action, Request):
                now = max(now, action)
                action = viewer.next(now)
                continue
            self.asked.append(action)
            size, body = 1000, None
            if action.kind == MANIFEST:
                body = MPD
            elif action.kind == MEDIA:
                size = {"720p": 2_500_000, "240p": 300_000, "audio": 64_000}[action.rendition] // 8
                now = max(now, ORIGIN + action.number + self.late.get(action.number, 0.0))
            seconds = size * 8 / self.rate + 0.001
            now += seconds
            action = viewer.answered(now, action, 200, size, seconds, 0.001, body, 1.0)
        viewer.update(until)


def viewer(**settings: float) -> Viewer:
    return Viewer("/live/cam/", "manifest.mpd", Settings(**settings), random.Random(1))


def test_it_starts_behind_the_edge_plays_without_a_stall_and_reads_the_manifest_as_it_ages() -> None:
    server, watching = Server(), viewer(startup=2.0)
    server.run(watching, ORIGIN + 100.2, ORIGIN + 130.2)
    kinds = [r.kind for r in server.asked]
    assert kinds[:3] == [MANIFEST, INIT, INIT]
    first = next(r for r in server.asked if r.kind == MEDIA)
    assert first.number == 99  # two seconds behind the newest complete (100)
    figures = watching.figures
    assert figures.stalls == 0 and figures.errors == {}
    assert figures.startup is not None and figures.startup < 0.1
    assert 28 < figures.played <= 30.01
    assert 13 <= kinds.count(MANIFEST) <= 16  # max-age=1, but minimumUpdatePeriod 2 s
    assert figures.renditions.get("720p", 0) > 25  # a fast link: the top, soon


def test_a_late_segment_is_a_stall_as_long_as_the_buffer_cannot_cover() -> None:
    server, watching = Server(late={110: 3.0}), viewer(startup=2.0, resume=1.0)
    server.run(watching, ORIGIN + 100.2, ORIGIN + 130.2)
    figures = watching.figures
    assert figures.stalls == 1
    # Segment 110 came 3 s late with 2 s buffered; playing resumes once 1 s is.
    assert 0.9 < figures.stalled < 2.2


def test_a_slow_link_gets_the_rendition_it_carries() -> None:
    server, watching = Server(rate=1.5e6), viewer()
    server.run(watching, ORIGIN + 100.2, ORIGIN + 140.2)
    assert {r.rendition for r in [r for r in server.asked if r.kind == MEDIA][-10:]} == {"240p", "audio"}
    assert watching.figures.renditions.get("240p", 0) > 30


def test_errors_are_counted_and_asked_again() -> None:
    watching = viewer()
    request = watching.start(ORIGIN + 10)
    assert isinstance(request, Request)
    again = watching.answered(ORIGIN + 10.1, request, 503, 0, 0.1, 0.1)
    assert again == pytest.approx(ORIGIN + 10.35)
    assert watching.failed(ORIGIN + 10.5, request) == pytest.approx(ORIGIN + 10.75)
    assert watching.figures.errors == {"503": 1, "connection": 1}


def test_an_ended_broadcast_lets_the_viewer_go() -> None:
    watching = viewer()
    request = watching.start(ORIGIN + 10)
    assert isinstance(request, Request)
    ended = MPD.replace(b'type="dynamic"', b'type="static"')
    assert watching.answered(ORIGIN + 10.1, request, 200, len(ended), 0.1, 0.1, ended) == float("inf")
