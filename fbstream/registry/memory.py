"""
The embedded registry: everything in this process's memory, leases on the
injected clock. For the ``all`` role and single-encoder deployments, where one
process is the whole data center; it has the same semantics as etcd's.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from fbstream.registry.base import Claim, Fenced, IRegistry, Owned, Owner, VideoPage, new_owner
from fbstream.registry.records import ListedVideo, VideoRecord, VideoState


@implementer(IRegistry)
class MemoryRegistry:
    def __init__(self, clock: IReactorTime, lease_seconds: float = 10.0) -> None:
        self.clock = clock
        self.lease_seconds = lease_seconds
        # Records are frozen: stored and handed out as they are.
        self._videos: dict[str, VideoRecord] = {}
        #: Stream ids in the order their videos were created (etcd's
        #: create revision), and each one's place in it: a page is a slice.
        self._created: list[str] = []
        self._place: dict[str, int] = {}
        self._states: dict[str, VideoState] = {}
        self._fences: dict[str, int] = {}
        #: stream -> (owner, lease expiry)
        self._owners: dict[str, tuple[Owner, float]] = {}
        self._watchers: list[Callable[[str, VideoRecord], None]] = []

    def _live_owner(self, stream: str) -> Owner | None:
        entry = self._owners.get(stream)
        if entry is None:
            return None
        if entry[1] <= self.clock.seconds():
            del self._owners[stream]
            return None
        return entry[0]

    def create_video(self, stream: str, record: VideoRecord) -> Deferred[None]:
        if stream not in self._place:
            self._place[stream] = len(self._created)
            self._created.append(stream)
        self._videos[stream] = record
        for changed in list(self._watchers):
            changed(stream, record)
        return succeed(None)

    def watch_videos(self, changed: Callable[[str, VideoRecord], None]) -> Callable[[], None]:
        self._watchers.append(changed)
        return lambda: self._watchers.remove(changed) if changed in self._watchers else None

    def get_video(self, stream: str) -> Deferred[VideoRecord | None]:
        return succeed(self._videos.get(stream))

    def put_video(self, stream: str, record: VideoRecord) -> Deferred[None]:
        return self.create_video(stream, record)

    def list_videos(self, limit: int, after: str | None = None) -> Deferred[VideoPage]:
        end = self._place.get(after, len(self._created)) if after is not None else len(self._created)
        start = max(0, end - limit)
        out = []
        for stream in reversed(self._created[start:end]):
            owner = self._live_owner(stream)
            out.append(ListedVideo(self._videos[stream], self._states.get(stream), owner))
        return succeed(VideoPage(out, more=start > 0))

    def claim(self, stream: str, encoder: str, http: str) -> Deferred[Claim]:
        current = self._live_owner(stream)
        if current is not None:
            return fail(Owned(current))
        fence = self._fences.get(stream, 0) + 1
        self._fences[stream] = fence
        owner = new_owner(encoder, http, fence)
        self._owners[stream] = (owner, self.clock.seconds() + self.lease_seconds)
        return succeed(Claim(stream, owner, owner.nonce))

    def _holds(self, claim: Claim) -> bool:
        return self._live_owner(claim.stream) == claim.owner

    def renew(self, claim: Claim) -> Deferred[None]:
        if not self._holds(claim):
            return fail(Fenced(claim.stream))
        self._owners[claim.stream] = (claim.owner, self.clock.seconds() + self.lease_seconds)
        return succeed(None)

    def release(self, claim: Claim) -> Deferred[None]:
        if self._holds(claim):
            del self._owners[claim.stream]
        return succeed(None)

    def owner(self, stream: str) -> Deferred[Owner | None]:
        return succeed(self._live_owner(stream))

    def read_state(self, stream: str) -> Deferred[VideoState | None]:
        return succeed(self._states.get(stream))

    def write_state(self, claim: Claim, state: VideoState) -> Deferred[VideoRecord | None]:
        if not self._holds(claim):
            return fail(Fenced(claim.stream))
        self._states[claim.stream] = state
        return self.get_video(claim.stream)
