"""
Why a live video ended: its kind, an enum (for code and metrics; nothing
parses the text), and the text shown to people (logs, the broadcaster's RTMP
status), which may carry details such as the stream id.

A leaf: the registry reports a lost ownership as one, and the encoder ends
its videos with them.
"""

from __future__ import annotations

import enum

import attrs


class EndKind(enum.Enum):
    #: The publish ended, and nothing keeps the video open for the
    #: broadcaster to come back (an encoder without a registry).
    PUBLISH_ENDED = "publish-ended"
    #: The broadcaster did not come back within the grace period.
    ABANDONED = "abandoned"
    #: The live API ended it.
    ENDED_BY_API = "ended-by-api"
    #: This encoder is no longer its owner (its lease lapsed, the registry
    #: was out of reach, another encoder took over).
    OWNERSHIP_LOST = "ownership-lost"
    #: It had ended before this process started; read back from the archive.
    ARCHIVED = "archived"


@attrs.frozen
class Ending:
    kind: EndKind
    #: What people are told, exactly as they were before there was a kind.
    detail: str
