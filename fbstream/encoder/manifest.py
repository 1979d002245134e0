"""
Live and replay manifests: the DASH MPD (DASH-IF IOP live profile) and the HLS
master and media playlists (fMP4, RFC 8216).

The MPD uses ``SegmentTemplate`` with ``$Number$`` and a fixed ``@duration``
rather than a ``SegmentTimeline``: every segment is cut at the same nominal
second in every rendition, so the template describes them exactly, players
need not refetch the manifest to learn of new segments (a timeline would need
a ``minimumUpdatePeriod`` of about one segment, one manifest request per
viewer per second through the caches), and the manifest stays byte-identical
between segments so caches serve it well.
"""

from __future__ import annotations

import math
from xml.etree import ElementTree as ET

import attrs

from fbstream.encoder.store import LiveVideo, Period, Rendition, Segment
from fbstream.encoder.transcode import SEGMENT_MS
from fbstream.live.blocking import PlaylistEdge
from fbstream.live.clock import iso_time

NS = "urn:mpeg:dash:schema:mpd:2011"


#: How far past its target latency a DASH player drifts before it seeks
#: back to the target (the ServiceDescription's Latency@max; dash.js seeks at
#: max - target + 0.5 s). A seek lands where nothing is buffered, so it is a
#: stall: it is the last resort of a player left far behind, never the way
#: to shed what a start on a busy machine costs; playing 10 % faster takes
#: that back. With 1 s of slack a player that waited a second for its first
#: chunks was past 2.7 s behind live soon after its first frame, and the
#: seek stalled the picture (a loaded CI run; dash.js's log: "Latency too
#: high, doing a seek to live point").
SEEK_SLACK_MS = 3000


def duration(seconds: float) -> str:
    return "PT%.3fS" % (seconds,)


def _sorted(video: LiveVideo, kind: str) -> list[Rendition]:
    found = [r for r in video.renditions.values() if r.info.kind == kind]
    return sorted(found, key=lambda r: -r.info.bandwidth)


@attrs.frozen
class Steering:
    """
    DASH Content Steering: a BaseURL per PoP (its ``serviceLocation`` the
    PoP's name, a pathway), and the steering server that orders them for
    each player (the glb role's ``/v1/steering``).
    """

    server: str
    #: (name, base URL) of each PoP, the first the default.
    pops: tuple[tuple[str, str], ...]


def mpd(
    video: LiveVideo,
    now: float,
    target_latency: float = 1.2,
    chunk_ms: int = 250,
    steering: Steering | None = None,
) -> bytes:
    """The MPD of ``video``: dynamic while live, static with every segment after."""
    live = not video.ended
    seg = SEGMENT_MS / 1000
    root = ET.Element("MPD", {
        "xmlns": NS,
        "profiles": "urn:mpeg:dash:profile:isoff-live:2011",
        "type": "dynamic" if live else "static",
        "minBufferTime": duration(2 * seg),
        "maxSegmentDuration": duration(seg),
    })
    if steering is not None and live:
        # Segments come from the PoP the steering server puts first for the
        # player; the MPD itself (the same for every viewer, cached at every
        # tier) from wherever the player found it.
        for name, base in steering.pops:
            ET.SubElement(root, "BaseURL", {"serviceLocation": name}).text = "%s/live/%s/" % (
                base.rstrip("/"), video.stream)
        ET.SubElement(root, "ContentSteering", {
            "defaultServiceLocation": steering.pops[0][0], "queryBeforeStart": "true",
        }).text = steering.server
    if live:
        root.set("availabilityStartTime", iso_time(video.availability_start))
        root.set("publishTime", iso_time(video.publish_time))
        root.set("minimumUpdatePeriod", duration(2 * seg))
        root.set("timeShiftBufferDepth", duration(video.window_seconds))
        root.set("suggestedPresentationDelay", duration(target_latency))
        # The latency players aim for, and how they may get there: play up
        # to 10 % faster or slower; past max, seek back to the target.
        target_ms = int(target_latency * 1000)
        sd = ET.SubElement(root, "ServiceDescription", {"id": "0"})
        ET.SubElement(sd, "Latency", {
            "target": str(target_ms),
            "min": str(max(250, target_ms - 500)),
            "max": str(target_ms + SEEK_SLACK_MS),
            "referenceId": "0",
        })
        ET.SubElement(sd, "PlaybackRate", {"min": "0.9", "max": "1.1"})
    else:
        root.set("mediaPresentationDuration", duration(video.periods[-1].ends_at_ms / 1000))
        root.set("publishTime", iso_time(video.publish_time))
    oldest_ms = (now - video.availability_start - video.window_seconds) * 1000 if live else None
    shown = []
    for p in video.periods:
        content_ms = p.content_ms
        if oldest_ms is not None and p.end_ms is not None and p.start_ms + content_ms < oldest_ms:
            continue  # wholly out of the time-shift window
        if live and p.index > 0 and video.complete_through < p.first_number:
            # A reconnect's period is announced once it has a segment in every
            # rendition: before, its init segments may not exist yet, and a
            # player told of it would fail on them.
            continue
        shown.append((p, content_ms))
    for i, (p, content_ms) in enumerate(shown):
        period = ET.SubElement(root, "Period", {"id": str(p.index), "start": duration(p.start_ms / 1000)})
        if p.end_ms is not None and (i < len(shown) - 1 or not live):
            # A period the broadcaster dropped out of: it ends with its
            # content, and the next one starts there (with the slate that
            # covers the time away). A live MPD's last period never ends,
            # even while the broadcaster is away: a player (dash.js) would
            # take its end for the end of the stream and close its
            # MediaSource.
            period.set("duration", duration(content_ms / 1000))
        _adaptation_sets(period, video, p, live, chunk_ms)
    ET.SubElement(root, "UTCTiming", {
        "schemeIdUri": "urn:mpeg:dash:utc:http-iso:2014",
        "value": "/time",
    })
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8")


def _adaptation_sets(period: ET.Element, video: LiveVideo, p: Period, live: bool, chunk_ms: int) -> None:
    for index, kind in enumerate(("video", "audio")):
        renditions = _sorted(video, kind)
        if not renditions:
            continue
        aset = ET.SubElement(period, "AdaptationSet", {
            "id": str(index),
            "contentType": kind,
            "mimeType": "%s/mp4" % (kind,),
            "segmentAlignment": "true",
            "startWithSAP": "1",
        })
        if kind == "video":
            aset.set("maxWidth", str(max(r.info.width for r in renditions)))
            aset.set("maxHeight", str(max(r.info.height for r in renditions)))
            aset.set("par", "16:9" if renditions[0].info.width * 9 == renditions[0].info.height * 16 else "%d:%d" % (renditions[0].info.width, renditions[0].info.height))
        else:
            aset.set("lang", "und")
        template = ET.SubElement(aset, "SegmentTemplate", {
            "timescale": "1000",
            "duration": str(SEGMENT_MS),
            "startNumber": str(p.first_number),
            "initialization": "$RepresentationID$/" + p.init_name(),
            "media": "$RepresentationID$/$Number$.m4s",
        })
        if p.base_ms:
            template.set("presentationTimeOffset", str(p.base_ms))
        if live:
            # A segment may be fetched as soon as its first chunk exists; it is
            # then delivered as it grows.
            template.set("availabilityTimeOffset", "%.3f" % ((SEGMENT_MS - chunk_ms) / 1000))
            template.set("availabilityTimeComplete", "false")
        for r in renditions:
            rep = ET.SubElement(aset, "Representation", {
                "id": r.info.name,
                "bandwidth": str(r.info.bandwidth),
                "codecs": r.info.codecs,
            })
            if kind == "video":
                rep.set("width", str(r.info.width))
                rep.set("height", str(r.info.height))
                rep.set("frameRate", r.info.frame_rate)
                rep.set("sar", "1:1")
            else:
                rep.set("audioSamplingRate", str(r.info.sample_rate))
                ET.SubElement(rep, "AudioChannelConfiguration", {
                    "schemeIdUri": "urn:mpeg:dash:23003:3:audio_channel_configuration:2011",
                    "value": "2",
                })


def _audio_video(video: LiveVideo) -> tuple[list[Rendition], list[Rendition]]:
    return _sorted(video, "video"), _sorted(video, "audio")


def master_playlist(video: LiveVideo) -> bytes:
    videos, audios = _audio_video(video)
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-INDEPENDENT-SEGMENTS"]
    audio_bw = audios[0].info.bandwidth if audios else 0
    if audios:
        a = audios[0].info
        lines.append(
            '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aac",NAME="audio",DEFAULT=YES,AUTOSELECT=YES,'
            'CHANNELS="2",URI="%s/playlist.m3u8"' % (a.name,)
        )
    for r in videos:
        i = r.info
        codecs = i.codecs + (",mp4a.40.2" if audios else "")
        rate = eval_rate(i.frame_rate)
        attrs = 'BANDWIDTH=%d,AVERAGE-BANDWIDTH=%d,CODECS="%s",RESOLUTION=%dx%d,FRAME-RATE=%.3f' % (
            int((i.bandwidth + audio_bw) * 1.2), i.bandwidth + audio_bw, codecs, i.width, i.height, rate)
        if audios:
            attrs += ',AUDIO="aac"'
        lines += ["#EXT-X-STREAM-INF:" + attrs, "%s/playlist.m3u8" % (i.name,)]
    if not videos and audios:
        a = audios[0].info
        lines += ['#EXT-X-STREAM-INF:BANDWIDTH=%d,CODECS="%s"' % (a.bandwidth, a.codecs), "%s/playlist.m3u8" % (a.name,)]
    return ("\n".join(lines) + "\n").encode()


def eval_rate(rate: str) -> float:
    num, _, den = rate.partition("/")
    try:
        return float(num) / float(den or 1)
    except ValueError:
        return 30.0


#: Complete segments at the end of a live playlist that still list their parts.
PARTS_KEPT = 3


def media_playlist(video: LiveVideo, rendition: Rendition, part_hold_back: float = 1.5, chunk_ms: int = 250) -> bytes:
    """
    The rendition's complete segments: a sliding window while live, all
    after. While live it is a Low-Latency HLS playlist: each CMAF chunk is
    also an ``EXT-X-PART`` (the last few segments', and those of the segment
    being made), the next part is an ``EXT-X-PRELOAD-HINT``, and reloads may
    block (``EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD``) until a part exists.
    """
    live = not video.ended
    if live:
        # The window only: the cost of a (blocking) reload never grows with the broadcast.
        numbers = rendition.recent(int(video.window_seconds * 1000 // SEGMENT_MS))
    else:
        numbers = sorted(rendition.history)
    period = video.period_of(numbers[0]) if numbers else video.periods[0]
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:9" if live else "#EXT-X-VERSION:7",
        "#EXT-X-TARGETDURATION:%d" % (max(1, round(SEGMENT_MS / 1000)),),
    ]
    growing = _growing(video, rendition, numbers) if live else None
    if live:
        lines += [
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=%.3f" % (part_hold_back,),
            "#EXT-X-PART-INF:PART-TARGET=%.3f" % (part_target(rendition, chunk_ms),),
        ]
    lines += [
        "#EXT-X-MEDIA-SEQUENCE:%d" % (numbers[0] if numbers else (growing.number if growing else 1),),
        # One discontinuity per reconnect: the sequence counts those gone by.
        "#EXT-X-DISCONTINUITY-SEQUENCE:%d" % (period.index,),
        "#EXT-X-INDEPENDENT-SEGMENTS",
        '#EXT-X-MAP:URI="%s"' % (period.init_name(),),
    ]
    if video.ended:
        lines.insert(2, "#EXT-X-PLAYLIST-TYPE:EVENT")
    with_parts = set(numbers[-PARTS_KEPT:]) if live else set()
    for i, number in enumerate(numbers):
        start_ms, duration_ms = rendition.history[number]
        p = video.period_of(number)
        if p is not period:
            period = p
            lines += ["#EXT-X-DISCONTINUITY", '#EXT-X-MAP:URI="%s"' % (p.init_name(),)]
            lines.append("#EXT-X-PROGRAM-DATE-TIME:" + _wall(video, p, start_ms))
        elif i == 0 or numbers[i - 1] != number - 1:
            lines.append("#EXT-X-PROGRAM-DATE-TIME:" + _wall(video, p, start_ms))
        if number in with_parts:
            lines += _parts(rendition, rendition.segments.get(number))
        lines.append("#EXTINF:%.3f," % (duration_ms / 1000,))
        lines.append("%d.m4s" % (number,))
    if growing is not None:
        if video.period_of(growing.number) is not period:
            p = video.period_of(growing.number)
            lines += ["#EXT-X-DISCONTINUITY", '#EXT-X-MAP:URI="%s"' % (p.init_name(),)]
            lines.append("#EXT-X-PROGRAM-DATE-TIME:" + _wall(video, p, growing.start_ms))
        lines += _parts(rendition, growing)
        if sum(growing.ticks) >= rendition.timescale * (SEGMENT_MS - 10) // 1000:
            # Its last part is out (the segment is closing): the next part
            # is the next segment's first.
            lines.append('#EXT-X-PRELOAD-HINT:TYPE=PART,URI="%d.0.m4s"' % (growing.number + 1,))
        else:
            lines.append('#EXT-X-PRELOAD-HINT:TYPE=PART,URI="%d.%d.m4s"' % (growing.number, len(growing.chunks)))
    elif live and numbers:
        lines.append('#EXT-X-PRELOAD-HINT:TYPE=PART,URI="%d.0.m4s"' % (numbers[-1] + 1,))
    if live:
        for other in sorted(video.renditions.values(), key=lambda r: r.info.name):
            if other is not rendition:
                last = last_part(other)
                if last is not None:
                    lines.append('#EXT-X-RENDITION-REPORT:URI="../%s/playlist.m3u8",LAST-MSN=%d,LAST-PART=%d'
                                 % (other.info.name, last[0], last[1]))
    if video.ended:
        lines.append("#EXT-X-ENDLIST")
    return ("\n".join(lines) + "\n").encode()


def playlist_edge(video: LiveVideo, rendition: Rendition) -> PlaylistEdge:
    """
    What the media playlist served now satisfies of blocking reloads, as
    :meth:`LiveVideo.has_part` decides them: the complete segments it lists
    (back to the first gap), and the newest segment if it is being made.
    """
    if video.ended:
        return PlaylistEdge(ended=True)
    last = first = rendition.newest
    window = int(video.window_seconds * 1000 // SEGMENT_MS)
    while last and first - 1 in rendition.history and last - first + 1 < window:
        first -= 1
    growing = rendition.segments[max(rendition.segments)] if rendition.segments else None
    if growing is None or growing.complete:
        return PlaylistEdge(first, last)
    return PlaylistEdge(first, last, growing.number, len(growing.chunks))


def _growing(video: LiveVideo, rendition: Rendition, numbers: list[int]) -> Segment | None:
    """The segment being made, if it has a part yet and follows the listed ones."""
    if not rendition.segments:
        return None
    seg = rendition.segments[max(rendition.segments)]
    if seg.complete or seg.failed or not seg.chunks or (numbers and seg.number <= numbers[-1]):
        return None
    return seg


def _parts(rendition: Rendition, seg: Segment | None) -> list[str]:
    if seg is None:
        return []
    lines = []
    independent = rendition.info.kind == "audio"
    for index, ticks in enumerate(seg.ticks):
        attributes = 'DURATION=%.5f,URI="%d.%d.m4s"' % (ticks / rendition.timescale, seg.number, index)
        if independent or index == 0:
            attributes += ",INDEPENDENT=YES"  # every segment starts with an IDR frame; AAC frames all stand alone
        lines.append("#EXT-X-PART:" + attributes)
    return lines


def last_part(rendition: Rendition) -> tuple[int, int] | None:
    """(segment, part) of the newest part ``rendition`` has, for a rendition report."""
    if not rendition.segments:
        return None
    seg = rendition.segments[max(rendition.segments)]
    if seg.chunks and not seg.failed:
        return seg.number, len(seg.chunks) - 1
    return None


def part_target(rendition: Rendition, chunk_ms: int) -> float:
    """
    The longest a part may be: a chunk is cut at the first frame at or past
    ``chunk_ms``, so a whole number of video frames or AAC frames (1024
    samples), whichever that rendition has. Never less than a part seen.
    """
    chunk = chunk_ms / 1000
    if rendition.info.kind == "audio":
        frame = 1024 / (rendition.info.sample_rate or 48000)
    else:
        frame = 1 / (eval_rate(rendition.info.frame_rate) or 30.0)
    target = math.ceil(chunk / frame - 1e-6) * frame
    seen = [t for seg in rendition.segments.values() for t in seg.ticks]
    longest = max(target, max(seen, default=0) / rendition.timescale)
    return math.ceil(longest * 1000 - 1e-6) / 1000


def _wall(video: LiveVideo, period: Period, media_ms: int) -> str:
    """The wall-clock time of a media time of ``period``."""
    return iso_time(video.availability_start + (period.start_ms + media_ms - period.base_ms) / 1000)
