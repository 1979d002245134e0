"""
What a simulated viewer needs of a live DASH manifest: each track's
renditions and the numbered segment template they share, and the clock
that says which segment is the newest complete one.

Only ``SegmentTemplate`` with ``$Number$`` (and ``$RepresentationID$``) in
its first period is read: what fbstream's encoder writes, and what most
live packagers do. Anything else is a :class:`ManifestError`.

Many viewers of one stream read the same manifest version: :func:`parse`
keeps the last few parsed by their bytes, so a version costs one parse
however many viewers read it.
"""

from __future__ import annotations

import calendar
import re
from collections import OrderedDict
from xml.etree import ElementTree

import attrs

NS = "{urn:mpeg:dash:schema:mpd:2011}"
#: Parsed versions kept, by their bytes.
MAX_PARSED = 64
_parsed: OrderedDict[bytes, Manifest] = OrderedDict()

_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:([\d.]+)S)?)?$")
_DATETIME = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$")


class ManifestError(ValueError):
    """A manifest this viewer cannot play."""


@attrs.frozen
class Rendition:
    id: str
    bandwidth: int
    height: int

    def init(self, track: Track) -> str:
        return track.initialization.replace("$RepresentationID$", self.id)

    def media(self, track: Track, number: int) -> str:
        return track.media.replace("$RepresentationID$", self.id).replace("$Number$", str(number))


@attrs.frozen
class Track:
    """One adaptation set: its renditions (lowest bandwidth first) and their template."""

    kind: str
    renditions: tuple[Rendition, ...]
    initialization: str
    media: str
    timescale: int
    duration: int
    start_number: int

    @property
    def seconds(self) -> float:
        """Each segment's duration."""
        return self.duration / self.timescale


@attrs.frozen
class Manifest:
    dynamic: bool
    #: Unix seconds: availabilityStartTime plus the period's start.
    origin: float
    tracks: tuple[Track, ...]
    #: minimumUpdatePeriod: how often a player reads a live manifest again (0: not said).
    update_period: float = 0.0

    def newest_complete(self, track: Track, now: float) -> int:
        """The number of the newest segment whose end has passed (start_number - 1: none yet)."""
        return track.start_number + int((now - self.origin) // track.seconds) - 1

    def end_of(self, track: Track, number: int) -> float:
        """When segment ``number`` ends (Unix seconds)."""
        return self.origin + (number - track.start_number + 1) * track.seconds

    def start_of(self, track: Track, number: int) -> float:
        return self.end_of(track, number) - track.seconds


def parse(body: bytes) -> Manifest:
    """The manifest ``body`` says (:class:`ManifestError` if it is not one a viewer here can play)."""
    known = _parsed.get(body)
    if known is not None:
        _parsed.move_to_end(body)
        return known
    manifest = _parse(body)
    _parsed[body] = manifest
    while len(_parsed) > MAX_PARSED:
        _parsed.popitem(last=False)
    return manifest


def _parse(body: bytes) -> Manifest:
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as e:
        raise ManifestError("not XML: %s" % (e,)) from None
    if root.tag != NS + "MPD":
        raise ManifestError("not a DASH manifest (root %r)" % (root.tag[:60],))
    dynamic = root.get("type", "static") == "dynamic"
    period = root.find(NS + "Period")
    if period is None:
        raise ManifestError("no Period")
    origin = _datetime(root.get("availabilityStartTime", "1970-01-01T00:00:00Z"))
    origin += _duration(period.get("start", "PT0S"))
    tracks = []
    for adaptation in period.findall(NS + "AdaptationSet"):
        template = adaptation.find(NS + "SegmentTemplate")
        if template is None or "$Number$" not in template.get("media", ""):
            raise ManifestError("an AdaptationSet without a $Number$ SegmentTemplate")
        kind = adaptation.get("contentType") or adaptation.get("mimeType", "/").split("/")[0]
        renditions = sorted(
            (Rendition(r.get("id", ""), _int(r.get("bandwidth"), "bandwidth"), int(r.get("height") or 0))
             for r in adaptation.findall(NS + "Representation")),
            key=lambda r: r.bandwidth)
        if not renditions:
            raise ManifestError("an AdaptationSet with no Representation")
        timescale = _int(template.get("timescale", "1"), "timescale")
        duration = _int(template.get("duration"), "duration")
        if timescale <= 0 or duration <= 0:
            raise ManifestError("a segment duration of %d/%d" % (duration, timescale))
        tracks.append(Track(kind, tuple(renditions), template.get("initialization", ""), template.get("media", ""),
                            timescale, duration, _int(template.get("startNumber", "1"), "startNumber")))
    if not tracks:
        raise ManifestError("no AdaptationSet")
    update = root.get("minimumUpdatePeriod")
    return Manifest(dynamic, origin, tuple(tracks), _duration(update) if update else 0.0)


def _int(value: str | None, name: str) -> int:
    try:
        return int(value or "")
    except ValueError:
        raise ManifestError("%s is %r, not a number" % (name, value)) from None


def _duration(text: str) -> float:
    match = _DURATION.match(text)
    if match is None:
        raise ManifestError("not a duration: %r" % (text[:40],))
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)


def _datetime(text: str) -> float:
    match = _DATETIME.match(text)
    if match is None:
        raise ManifestError("not a date and time: %r" % (text[:40],))
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    seconds = float(calendar.timegm((int(year), int(month), int(day), int(hour), int(minute), int(second), 0, 0, 0)))
    if fraction:
        seconds += float("0." + fraction)
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return float(seconds)

