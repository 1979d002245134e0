"""
The playback URLs of DESIGN.md, defined once: the encoder serves them, the
caches in front pass them (and nothing else) upstream.

- ``/live/index.json``
- ``/live/<id>/manifest.mpd``, ``/live/<id>/master.m3u8``
- ``/live/<id>/<rendition>/playlist.m3u8``
- ``/live/<id>/<rendition>/init.mp4`` (the first period), ``init-<k>.mp4``
  (period k, after a reconnect), ``<n>.m4s``
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

STREAM_ID = re.compile(rb"^%s$" % (_STREAM_ID,))
RENDITION = re.compile(rb"^%s$" % (_RENDITION,))
SEGMENT = re.compile(rb"^%s$" % (_SEGMENT,))
#: Group 1 is the period's index, absent for the first period.
INIT = re.compile(rb"^%s$" % (_INIT,))

#: A whole playback path.
PLAYBACK_PATH = re.compile(
    rb"^/live/(index\.json|%s/(manifest\.mpd|master\.m3u8|%s/(playlist\.m3u8|%s|%s)))$"
    % (_STREAM_ID, _RENDITION, _INIT, _SEGMENT)
)
