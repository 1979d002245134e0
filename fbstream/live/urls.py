"""
The playback URLs of DESIGN.md, defined once: the encoder serves them, the
caches in front pass them (and nothing else) upstream.

- ``/live/index.json``
- ``/live/<id>/manifest.mpd``, ``/live/<id>/master.m3u8``
- ``/live/<id>/<rendition>/playlist.m3u8``
- ``/live/<id>/<rendition>/init.mp4`` (the first period), ``init-<k>.mp4``
  (period k, after a reconnect), ``<n>.m4s``
- ``/live/<id>/<rendition>/<n>.<p>.m4s``: part ``p`` (from 0) of segment
  ``n``, its p-th CMAF chunk: an LL-HLS ``EXT-X-PART``
- ``/live/<id>/comments/<n>.json``: the comments and reactions of second
  ``n`` (Unix time), immutable once it is over (:mod:`fbstream.live.comments`)

A media playlist may carry LL-HLS's blocking-reload directives
(``?_HLS_msn=<n>&_HLS_part=<p>``); :func:`playlist_query` gives the one form
of them that every tier uses as part of the cache key.
"""

from __future__ import annotations

import re

#: A stream id fits a URL path segment and a file name, and never starts with
#: a dot: ``.`` and ``..`` would be the archive's own directory or its parent.
STREAM_ID_PATTERN = r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}"
_STREAM_ID = STREAM_ID_PATTERN.encode()
_RENDITION = rb"[A-Za-z0-9_]{1,32}"
_SEGMENT = rb"([0-9]{1,18})\.m4s"
_INIT = rb"init(?:-([0-9]{1,6}))?\.mp4"
_PART = rb"([0-9]{1,18})\.([0-9]{1,3})\.m4s"
_COMMENTS = rb"([0-9]{1,12})\.json"

STREAM_ID = re.compile(rb"^%s$" % (_STREAM_ID,))
RENDITION = re.compile(rb"^%s$" % (_RENDITION,))
SEGMENT = re.compile(rb"^%s$" % (_SEGMENT,))
#: Group 1 is the period's index, absent for the first period.
INIT = re.compile(rb"^%s$" % (_INIT,))
#: Groups: the segment's number, the part's index in it.
PART = re.compile(rb"^%s$" % (_PART,))

#: Group 1 is the second (Unix time) whose comments and reactions it is.
COMMENTS = re.compile(rb"^%s$" % (_COMMENTS,))

#: A whole playback path.
PLAYBACK_PATH = re.compile(
    rb"^/live/(index\.json|%s/(manifest\.mpd|master\.m3u8|comments/%s|%s/(playlist\.m3u8|%s|%s|%s)))$"
    % (_STREAM_ID, _COMMENTS, _RENDITION, _INIT, _SEGMENT, _PART)
)

#: A segment or part path. Groups: the stream id, the segment's number;
#: by name, those (``stream``, ``number``), the ``rendition`` and the
#: ``part``'s index (None: a whole segment).
MEDIA_PATH = re.compile(rb"^/live/(?P<stream>%s)/(?P<rendition>%s)/(?P<number>[0-9]{1,18})(?:\.(?P<part>[0-9]{1,3}))?\.m4s$"
                        % (_STREAM_ID, _RENDITION))
#: The header with which "not yet" answers give the live edge they were measured against.
LIVE_EDGE_HEADER = b"x-fbstream-live-edge"

_DIGITS = re.compile(rb"^[0-9]{1,18}$")


def playlist_query(args: dict[bytes, list[bytes]]) -> tuple[int, int | None] | None:
    """
    The blocking-reload directives of a media playlist request
    (``_HLS_msn``, ``_HLS_part``) as numbers, or None if there are none or
    they are malformed (then the request is an ordinary reload).
    """
    msn = args.get(b"_HLS_msn", [b""])[0]
    part = args.get(b"_HLS_part", [None])[0]
    if not _DIGITS.match(msn) or (part is not None and not _DIGITS.match(part)):
        return None
    return int(msn), (int(part) if part is not None else None)


def playlist_key(path: bytes, directives: tuple[int, int | None] | None) -> bytes:
    """A playlist's path with its directives in the one order every tier uses."""
    if directives is None:
        return path
    msn, part = directives
    if part is None:
        return b"%s?_HLS_msn=%d" % (path, msn)
    return b"%s?_HLS_msn=%d&_HLS_part=%d" % (path, msn, part)
