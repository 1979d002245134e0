"""
Comments and reactions on a live video, as a timed track (sans-IO).

What viewers post during second ``n`` (Unix time, the clock every tier and
player shares through ``/time``) is published as one document,
``/live/<id>/comments/<n>.json``, once that second is over; from then on it
never changes, so every cache keeps it as it keeps a segment, and a stream
with 800,000 viewers reading its comments costs the data center about one
request per second per PoP. Reactions are not listed one by one: a second's
document counts them per kind.

A document::

    {"second": n, "comments": [{"name": "...", "text": "...", "at": 1795470000.25}, ...],
     "reactions": {"like": 12, "love": 3}, "dropped": 0, "viewers": 1200}

The replay keeps the documents of the seconds anyone posted in (the
encoder appends them to the video's archive, :mod:`fbstream.encoder.chat`):
:meth:`Track.finished` hands each out once it is over, and
:func:`empty_document` is a second nobody posted in.

``viewers`` is the live video's audience: each PoP process counts the
connections that asked for its media in the last few seconds and reports
the count with its batch, once a second; the document sums the counts
reported in the last 3 s (none reported: no ``viewers``).

Comment text is kept as posted (plain text: whoever shows it shows it as
text, never as HTML). Everything is bounded: the text's length, the
comments kept per second (past :data:`MAX_PER_SECOND` they are counted as
``dropped``), and the seconds kept per stream (:data:`KEEP_SECONDS`).
"""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from typing import Any

import attrs

#: The reactions a viewer may post.
REACTIONS = ("like", "love", "haha", "wow", "sad", "angry")
#: A comment's text, and its author's name, in characters.
MAX_TEXT = 500
MAX_NAME = 64
#: A post's body, bytes: past this it is refused (413) unread.
MAX_BODY = 4096
#: Comments one stream keeps for one second; the rest are counted, not kept.
MAX_PER_SECOND = 1000
#: Seconds of comments a stream keeps (the newest).
KEEP_SECONDS = 120


class PostError(ValueError):
    """A post that cannot be taken: ``code`` is the HTTP status to answer, the message says why."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _body(raw: bytes, most: int = MAX_BODY, what: str = "a post") -> dict[str, Any]:
    """A JSON object of at most ``most`` bytes (``what`` names it in the errors)."""
    if len(raw) > most:
        raise PostError(413, "%s is at most %d bytes" % (what, most))
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise PostError(400, "%s is a JSON object" % (what,)) from None
    if not isinstance(body, dict):
        raise PostError(400, "%s is a JSON object" % (what,))
    return body


def _line(value: Any, name: str, most: int, empty: bool) -> str:
    if value is None and empty:
        return ""
    if not isinstance(value, str):
        raise PostError(400, "%s: a string" % (name,))
    # One line of printable characters, no runs of spaces.
    value = "".join(c for c in " ".join(value.split()) if c.isprintable())
    if len(value) > most:
        raise PostError(413, "%s: at most %d characters" % (name, most))
    if not value and not empty:
        raise PostError(400, "%s: not empty" % (name,))
    return value


def parse_comment(raw: bytes) -> tuple[str, str]:
    """``(name, text)`` from a comment's body, ``{"text": "...", "name": "..."}``, or :class:`PostError`."""
    body = _body(raw)
    return _line(body.get("name"), "name", MAX_NAME, True), _line(body.get("text"), "text", MAX_TEXT, False)


def parse_reaction(raw: bytes) -> str:
    """The kind of a reaction's body, ``{"reaction": "like"}``, or :class:`PostError`."""
    kind = _body(raw).get("reaction")
    if kind not in REACTIONS:
        raise PostError(400, "reaction: one of %s" % (", ".join(REACTIONS),))
    return str(kind)


#: A batch (a PoP's posts of one stream, passed on once a second) may take this much at most.
MAX_BATCH_BODY = 1024 * 1024
#: A reaction count one batch may carry, per kind.
MAX_REACTIONS = 10_000_000
#: Viewer counts one batch may carry (one per PoP process), each at most;
#: the reporters a stream keeps, and for how long a count stands.
MAX_REPORTERS = 64
MAX_VIEWERS = 10_000_000
KEEP_REPORTERS = 4096
VIEWERS_FRESH = 3.0


def parse_batch(raw: bytes) -> tuple[list[tuple[str, str, float]], dict[str, int], dict[str, int]]:
    """
    ``(comments, reactions, viewers)`` from a batch, ``{"comments": [{"name",
    "text", "at"}, ...], "reactions": {"like": 12, ...}, "viewers": {"<PoP
    process>": 120}}``, each comment checked as a viewer's is; or
    :class:`PostError`.
    """
    body = _body(raw, MAX_BATCH_BODY, "a batch")
    comments, reactions = body.get("comments", []), body.get("reactions", {})
    if not isinstance(comments, list) or not isinstance(reactions, dict):
        raise PostError(400, 'a batch is {"comments": [...], "reactions": {...}}')
    taken = []
    for comment in comments:
        if not isinstance(comment, dict):
            raise PostError(400, "comments: objects")
        at = comment.get("at")
        if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at):
            raise PostError(400, "comments: each with its time, at")
        taken.append((_line(comment.get("name"), "name", MAX_NAME, True),
                      _line(comment.get("text"), "text", MAX_TEXT, False), float(at)))
    counts = {}
    for kind, n in reactions.items():
        if kind not in REACTIONS or isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= MAX_REACTIONS:
            raise PostError(400, "reactions: counts of %s" % (", ".join(REACTIONS),))
        counts[str(kind)] = n
    audience = body.get("viewers", {})
    if not isinstance(audience, dict) or len(audience) > MAX_REPORTERS:
        raise PostError(400, "viewers: at most %d counts, by reporter" % (MAX_REPORTERS,))
    viewers = {}
    for reporter, n in audience.items():
        if len(reporter) > MAX_NAME or isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_VIEWERS:
            raise PostError(400, "viewers: a count (0 to %d) per reporter" % (MAX_VIEWERS,))
        viewers[reporter] = n
    return taken, counts, viewers


@attrs.define
class Second:
    comments: list[dict[str, Any]] = attrs.Factory(list)
    reactions: dict[str, int] = attrs.Factory(dict)
    dropped: int = 0
    #: The viewers when the second was last written (None: nobody reported).
    viewers: int | None = None
    #: A PoP's batch: its viewers of the stream, by reporter.
    audience: dict[str, int] = attrs.Factory(dict)


class Track:
    """One stream's comments and reactions, second by second."""

    def __init__(self, keep: int = KEEP_SECONDS, per_second: int = MAX_PER_SECOND) -> None:
        self.keep = keep
        self.per_second = per_second
        self.seconds: OrderedDict[int, Second] = OrderedDict()
        #: The newest second forgotten (its document is gone, not empty).
        self.forgotten = -math.inf
        #: Each PoP process's last count of the stream's viewers, and when.
        self.audience: OrderedDict[str, tuple[int, float]] = OrderedDict()
        #: The newest second :meth:`finished` has handed out.
        self.handed_out = -math.inf

    def _second(self, now: float) -> tuple[int, Second]:
        n = math.floor(now)
        second = self.seconds.get(n)
        if second is None:
            second = self.seconds[n] = Second(viewers=self.viewers(now))
            while len(self.seconds) > self.keep:
                self.forgotten = max(self.forgotten, self.seconds.popitem(last=False)[0])
        return n, second

    def viewers(self, now: float) -> int | None:
        """The viewers the PoPs reported in the last :data:`VIEWERS_FRESH` seconds (None: none did)."""
        audience = self.audience
        while audience and next(iter(audience.values()))[1] < now - VIEWERS_FRESH:
            audience.popitem(last=False)
        return sum(n for n, _ in audience.values()) if audience else None

    def comment(self, now: float, name: str, text: str) -> int:
        """Keep a comment posted at ``now``; the second it is published in."""
        n, second = self._second(now)
        if len(second.comments) < self.per_second:
            second.comments.append({"name": name, "text": text, "at": round(now, 3)})
        else:
            second.dropped += 1
        return n

    def react(self, now: float, kind: str, count: int = 1) -> int:
        n, second = self._second(now)
        second.reactions[kind] = second.reactions.get(kind, 0) + count
        return n

    def batch(self, now: float, comments: list[tuple[str, str, float]], reactions: dict[str, int],
              viewers: dict[str, int] | None = None) -> int:
        """A PoP's batch, arrived at ``now``: into the second it arrived in (each comment keeps its own time)."""
        for reporter, count in (viewers or {}).items():
            self.audience.pop(reporter, None)
            self.audience[reporter] = (count, now)  # the newest last
            if len(self.audience) > KEEP_REPORTERS:
                self.audience.popitem(last=False)
        n, second = self._second(now)
        if viewers:
            second.viewers = self.viewers(now)
        for name, text, at in comments:
            if len(second.comments) < self.per_second:
                second.comments.append({"name": name, "text": text, "at": round(at, 3)})
            else:
                second.dropped += 1
        for kind, count in reactions.items():
            second.reactions[kind] = second.reactions.get(kind, 0) + count
        return n

    def gone(self, n: int) -> bool:
        """Whether second ``n`` is older than what is kept."""
        return n <= self.forgotten

    def document(self, n: int, now: float) -> bytes | None:
        """
        Second ``n``'s document, once it is over at ``now`` (None before: it
        may still change; see :meth:`gone` for one no longer kept).
        """
        if n + 1 > now or self.gone(n):
            return None
        return _render(n, self.seconds.get(n) or Second())

    def finished(self, now: float, everything: bool = False) -> list[tuple[int, bytes]]:
        """
        The documents of the seconds over at ``now`` (of every second kept,
        if ``everything``: no more posts will come) that have a comment or a
        reaction, each handed out once, oldest first: what the replay keeps.
        """
        out = []
        for n, second in self.seconds.items():
            if n <= self.handed_out:
                continue
            if not everything and n + 1 > now:
                break
            self.handed_out = n
            if second.comments or second.reactions or second.dropped:
                out.append((n, _render(n, second)))
        return out


def _render(n: int, second: Second) -> bytes:
    """Second ``n``'s document. Its first member is ``"second"``, which :data:`SECOND_OF` reads."""
    doc: dict[str, Any] = {"second": n, "comments": second.comments, "reactions": second.reactions,
                           "dropped": second.dropped}
    if second.viewers is not None:
        doc["viewers"] = second.viewers
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def empty_document(n: int) -> bytes:
    """The document of a second nobody posted in."""
    return _render(n, Second())


#: The second a document is of, read from its first bytes (a replay's index
#: is built from these without parsing each document).
SECOND_OF = re.compile(rb'^\{"second":(-?[0-9]{1,15}),')
