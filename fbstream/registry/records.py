"""
What the registry holds about a live video besides its owner: the live API's
record and the owner's state, and the status they add up to.
"""

from __future__ import annotations

import enum


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
