"""
What a media playlist version satisfies of LL-HLS blocking reloads
(``?_HLS_msn=<n>&_HLS_part=<p>``, see :mod:`fbstream.live.urls`), said in a
header of our own that the encoder puts on every version it serves or pushes
(:data:`HLS_EDGE_HEADER`), so a cache holding a version can answer the
blocking reloads it satisfies as the encoder would, without asking it.

The encoder holds a blocking reload until ``LiveVideo.has_part(msn, part)``:
segment ``msn`` is complete, or it is being made and has part ``part``
(``part`` None: the whole segment). The header's value is up to three
space-separated tokens, each at most once:

- ``<first>-<last>``: segments ``first`` through ``last`` are complete;
- ``<number>.<parts>``: segment ``number`` is not complete and has ``parts``
  parts;
- ``end``: the broadcast is over (the encoder then answers every reload
  with the plain playlist, its directives ignored).

A segment the header does not name may still be complete (one older than
``first``): a cache does not know, and asks upstream as it always did. A
value that does not parse is ignored the same way.
"""

from __future__ import annotations

import re

import attrs

#: The response header of a media playlist saying what its version satisfies.
HLS_EDGE_HEADER = b"x-fbstream-hls-edge"
#: What an answer to a blocking reload says of its lifetime: it stays true
#: of the part it was asked for, so a cache may answer the same question
#: with it for a while.
BLOCKED_CACHE_CONTROL = b"public, max-age=2"
#: How far past the newest segment a version names a blocking reload may
#: be, to be worth waiting for a later version here: the next segment's
#: first part, and one for players' clocks. (The encoder answers requests
#: further ahead itself, with a 400.)
AHEAD = 2
#: The longest value read; anything longer is not ours.
MAX_VALUE = 64

#: A number as written: no sign, no leading zero, never too long for a segment's.
_NUMBER = rb"(0|[1-9][0-9]{0,17})"
_RANGE = re.compile(rb"%s-%s" % (_NUMBER, _NUMBER))
_GROWING = re.compile(rb"%s\.%s" % (_NUMBER, _NUMBER))


@attrs.frozen
class PlaylistEdge:
    """What one playlist version satisfies (see the module's docstring)."""

    #: The complete segments first..last (last 0: none named).
    first: int = 0
    last: int = 0
    #: The segment being made and how many parts it has (None: none).
    growing: int | None = None
    parts: int = 0
    ended: bool = False

    def header(self) -> bytes | None:
        """The header's value (None: nothing to say, no header)."""
        if self.ended:
            return b"end"
        tokens = []
        if self.last:
            tokens.append(b"%d-%d" % (self.first, self.last))
        if self.growing is not None:
            tokens.append(b"%d.%d" % (self.growing, self.parts))
        return b" ".join(tokens) or None

    @classmethod
    def parse(cls, value: bytes) -> PlaylistEdge | None:
        """The edge a header's value says, or None if it is not one this module writes."""
        if len(value) > MAX_VALUE:
            return None
        tokens = value.split(b" ")
        if tokens == [b"end"]:
            return cls(ended=True)
        first = last = parts = 0
        growing = None
        for token in tokens:
            span, made = _RANGE.fullmatch(token), _GROWING.fullmatch(token)
            if span is not None and not last:
                first, last = int(span.group(1)), int(span.group(2))
                if not 0 < first <= last:
                    return None
            elif made is not None and growing is None:
                growing, parts = int(made.group(1)), int(made.group(2))
            else:
                return None  # garbage, a token twice, or "end" among others
        return cls(first, last, growing, parts)

    def satisfies(self, msn: int, part: int | None) -> bool:
        """Whether this version answers a blocking reload for ``msn`` (and ``part``)."""
        if self.ended or (self.last and self.first <= msn <= self.last):
            return True
        return msn == self.growing and part is not None and part < self.parts

    def later(self, msn: int) -> bool:
        """
        Whether a later version may answer a reload for ``msn`` that this one
        does not: ``msn`` is past every complete segment it names, and not far.
        """
        if self.ended:
            return False
        newest = max(self.last, self.growing or 0)
        return self.last < msn <= newest + AHEAD


def edge_of(headers: list[tuple[bytes, bytes]]) -> PlaylistEdge | None:
    """The edge ``headers`` say (None: no header, several, or one that does not parse)."""
    values = [value for name, value in headers if name == HLS_EDGE_HEADER]
    return PlaylistEdge.parse(values[0]) if len(values) == 1 else None
