"""
What the registry holds about a live video besides its owner: the live API's
record, the owner's state, and the status they add up to.

Their JSON is what etcd holds and what older versions wrote, so ``to_json``
writes exactly the keys, in the order, that those versions wrote, and
``from_json`` reads what they wrote.
"""

from __future__ import annotations

import enum
import json
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from fbstream.registry.base import Owner


class VideoStatus(enum.Enum):
    """
    A live video's status, as the owner's state and the live API's JSON
    spell it (the values are on the wire: never change one).
    """

    #: The API made it; no broadcaster has published yet (never in a state).
    CREATED = "created"
    LIVE = "live"
    #: The broadcaster dropped; the encoder waits for it to come back.
    INTERRUPTED = "interrupted"
    ENDED = "ended"


def _object(text: str | bytes) -> dict[str, Any]:
    raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    return raw


def _number(raw: Any) -> float:
    """A JSON number, kept as it was read (an int stays an int, so it is written back the same)."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError("%r is not a number" % (raw,))
    return raw


@attrs.frozen
class VideoRecord:
    """The live API's record of a video (``videos/<id>``), written only by the API."""

    id: str
    #: The data center its stream token names.
    dc: str
    #: When the API made it (seconds since the epoch).
    created: float
    title: str = ""
    #: The API ended it: its broadcaster is stopped and refused from then on.
    ended: bool = False
    ended_at: float | None = None

    def end(self, at: float) -> VideoRecord:
        return attrs.evolve(self, ended=True, ended_at=at)

    def to_json(self) -> str:
        raw: dict[str, Any] = {"id": self.id, "dc": self.dc, "created": self.created, "title": self.title,
                               "ended": self.ended}
        if self.ended_at is not None:
            raw["ended_at"] = self.ended_at
        return json.dumps(raw)

    @classmethod
    def from_json(cls, text: str | bytes) -> VideoRecord:
        raw = _object(text)
        ended_at = raw.get("ended_at")
        return cls(str(raw["id"]), str(raw["dc"]), _number(raw["created"]), str(raw.get("title", "")),
                   bool(raw.get("ended", False)), None if ended_at is None else _number(ended_at))


@attrs.frozen
class VideoState:
    """
    The owner's state of a live video (``state/<id>``): enough for the next
    owner to continue it, and for the origin to find the encoder that has
    its segments once no one owns it.
    """

    status: VideoStatus
    #: The owner that wrote it: its name, playback endpoint and fence.
    encoder: str
    http: str
    fence: int
    availability_start: float
    #: The encoder's periods and renditions, as ``attrs.asdict`` makes them
    #: (the registry does not look inside).
    periods: list[dict[str, Any]]
    renditions: list[dict[str, Any]]
    #: The highest segment number made.
    last_number: int

    def to_json(self) -> str:
        return json.dumps({
            "status": self.status.value,
            "encoder": self.encoder,
            "http": self.http,
            "fence": self.fence,
            "availability_start": self.availability_start,
            "periods": self.periods,
            "renditions": self.renditions,
            "last_number": self.last_number,
        })

    @classmethod
    def from_json(cls, text: str | bytes) -> VideoState:
        raw = _object(text)
        periods, renditions = raw["periods"], raw["renditions"]
        if not isinstance(periods, list) or not isinstance(renditions, list):
            raise ValueError("periods and renditions must be lists")
        return cls(VideoStatus(raw["status"]), str(raw["encoder"]), str(raw["http"]), int(raw["fence"]),
                   _number(raw["availability_start"]), periods, renditions, int(raw["last_number"]))


@attrs.frozen
class ListedVideo:
    """One video of :meth:`~fbstream.registry.base.IRegistry.list_videos`."""

    record: VideoRecord
    state: VideoState | None
    #: Its owner, if its lease is live.
    owner: Owner | None
