"""
The registry: the single source of truth for who owns each live video.

It holds four things per stream id:

- the live API's record of the video (``videos/<id>``, a
  :class:`~fbstream.registry.records.VideoRecord`: data center, creation
  time, whether the API ended it), written only by the API;
- the fencing number (``fence/<id>``), raised by one with every new owner;
- the owner (``owner/<id>``: encoder name, its playback HTTP endpoint, its
  fencing number), held under a lease the owner keeps renewing; when the owner
  dies the lease lapses and the key goes with it;
- the owner's state of the live video (``state/<id>``, a
  :class:`~fbstream.registry.records.VideoState`: availability start,
  renditions, periods, the last segment number, status), which only the
  current owner can write: every write is a transaction conditioned on the
  owner key still holding exactly this claim, so an owner that was replaced
  (its lease lapsed, a higher fence took over) is refused with
  :class:`Fenced` and stops.

Backends implement :class:`IRegistry`; :class:`Ownership` keeps one claim's
lease alive on top of any of them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import Attribute, Interface

from fbstream.endings import Ending, EndKind
from fbstream.registry.records import ListedVideo, VideoRecord, VideoState


class Owned(Exception):
    """Another encoder owns the stream (its lease is live)."""

    def __init__(self, owner: Owner) -> None:
        super().__init__("stream is owned by encoder %s (fence %d)" % (owner.encoder, owner.fence))
        self.owner = owner


class Fenced(Exception):
    """This claim is no longer the stream's owner; nothing was written."""


class RegistryUnavailable(Exception):
    """The registry could not be reached."""


@attrs.frozen
class Owner:
    encoder: str
    #: Where the owner serves playback (an endpoint string for the origin).
    http: str
    fence: int
    #: Unique per claim: a re-claim by the same encoder is a different owner.
    nonce: str = ""

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Owner:
        raw = json.loads(text)
        return cls(str(raw["encoder"]), str(raw["http"]), int(raw["fence"]), str(raw.get("nonce", "")))


@attrs.define
class Claim:
    """A held ownership: what a backend needs to renew, write and release it."""

    stream: str
    owner: Owner
    lease: Any


@attrs.frozen
class VideoPage:
    """One page of the API's records, newest first."""

    #: The API's records, each with its state and owner.
    videos: list[ListedVideo]
    #: Whether older videos follow the last one on this page.
    more: bool


def new_owner(encoder: str, http: str, fence: int) -> Owner:
    return Owner(encoder, http, fence, os.urandom(8).hex())


class IRegistry(Interface):
    lease_seconds = Attribute("how long a claim lives without renewal")

    def create_video(stream: str, record: VideoRecord) -> Deferred[None]:
        """Store the API's record of a new video."""

    def get_video(stream: str) -> Deferred[VideoRecord | None]:
        """The API's record of ``stream``."""

    def put_video(stream: str, record: VideoRecord) -> Deferred[None]:
        """Replace the API's record (to end a video)."""

    def list_videos(limit: int, after: str | None = None) -> Deferred[VideoPage]:
        """
        At most ``limit`` videos, newest created first, beginning with the one
        created just before ``after`` (from the newest if ``after`` is None or
        no video). A record rewritten by :meth:`put_video` keeps its place.
        Costs about the page, however many videos there are.
        """

    def claim(stream: str, encoder: str, http: str) -> Deferred[Claim]:
        """Become the owner under a higher fence, or fail with :class:`Owned`."""

    def renew(claim: Claim) -> Deferred[None]:
        """Keep the lease alive, or fail with :class:`Fenced`."""

    def release(claim: Claim) -> Deferred[None]:
        """Give up ownership (if still held)."""

    def owner(stream: str) -> Deferred[Owner | None]:
        """The current owner, if its lease is live."""

    def read_state(stream: str) -> Deferred[VideoState | None]:
        """The last state the owners wrote."""

    def write_state(claim: Claim, state: VideoState) -> Deferred[VideoRecord | None]:
        """
        Write ``state`` if ``claim`` is still the owner, else fail with
        :class:`Fenced`; returns the API's record, read in the same step.
        """

    def watch_videos(changed: Callable[[str, VideoRecord], None]) -> Callable[[], None]:
        """
        Call ``changed(stream, record)`` for every API record written from now
        on (an ended video, at once); returns the function that stops it.
        """


class Ownership:
    """
    Keeps a claim alive: renews its lease every third of its life and calls
    ``on_lost(ending)`` once (an :class:`~fbstream.endings.Ending` of kind
    ``OWNERSHIP_LOST``) if a renewal is refused or the registry stays
    unreachable for longer than the lease. A renewal that could not reach the
    registry is tried again every tenth of the lease, so an outage shorter
    than the lease (less a tenth) keeps it, wherever it falls.
    """

    log = Logger()

    def __init__(self, registry: Any, claim: Claim, clock: IReactorTime, on_lost: Callable[[Ending], None]) -> None:
        self.registry = registry
        self.claim = claim
        self.clock = clock
        self.on_lost = on_lost
        self.lost = False
        #: Renewals have stopped (released, lost, or let go): none is tried again.
        self.stopped = False
        self._renewed = clock.seconds()
        self._retry: IDelayedCall | None = None
        self._loop = LoopingCall(self._renew)
        self._loop.clock = clock
        self._loop.start(registry.lease_seconds / 3, now=False)

    @property
    def fence(self) -> int:
        return self.claim.owner.fence

    def _renew(self) -> None:
        if self.stopped:
            return
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        d = self.registry.renew(self.claim)

        def ok(_: Any) -> None:
            self._renewed = self.clock.seconds()

        def failed(failure: Any) -> None:
            if self.lost or self.stopped:
                return  # a renewal answered after the stop is nobody's concern
            if failure.check(Fenced):
                self._lose("the lease on stream %s lapsed" % (self.claim.stream,))
            elif self.clock.seconds() - self._renewed > self.registry.lease_seconds:
                self._lose("the registry was unreachable for longer than the lease")
            else:
                self.log.warn("renewing ownership of {stream} failed: {e}",
                              stream=self.claim.stream, e=failure.getErrorMessage())
                self._retry = self.clock.callLater(self.registry.lease_seconds / 10, self._renew)

        d.addCallbacks(ok, failed)

    def _lose(self, detail: str) -> None:
        if self.lost:
            return
        self.lost = True
        self.stop()
        self.on_lost(Ending(EndKind.OWNERSHIP_LOST, detail))

    def write(self, state: VideoState) -> Deferred[VideoRecord | None]:
        d: Deferred[VideoRecord | None] = self.registry.write_state(self.claim, state)

        def fenced(failure: Any) -> Any:
            if failure.check(Fenced):
                self._lose("another encoder took over stream %s" % (self.claim.stream,))
            return failure

        return d.addErrback(fenced)

    def stop(self) -> None:
        self.stopped = True
        if self._loop.running:
            self._loop.stop()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()

    def release(self) -> Deferred[None]:
        self.stop()
        self.lost = True
        return self.registry.release(self.claim)
