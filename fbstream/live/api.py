"""
The live API, served by the PoP: ``/api/v1/live_videos``.

- ``POST`` creates a live video: a stream id, a signed stream token naming the
  stream and its data center, the RTMP(S) ingest URLs and the playback URLs.
- ``GET`` lists live videos with their status (``created`` until a
  broadcaster publishes, then ``live``, ``interrupted`` while the encoder waits
  for a reconnect, ``ended``); ``GET .../<id>`` shows one.
- ``DELETE .../<id>`` ends one: the encoder stops its broadcaster and the
  video becomes its replay; its token is refused from then on.

Every call needs ``Authorization: Bearer <api key>``, or a browser session
(:mod:`fbstream.live.login`).

With a balancer (``pops_for``: the PoP's ``glb.url``), the playback URLs of
a video a ``GET .../<id>`` shows are at the PoP the balancer's map puts
first for the caller's network (``playback.pop`` names it), which places a
viewer there; otherwise, and when the balancer names none, at
``api.playback_url``. A listing gives the network's last map, placing no
one (an app that polls the list is not that many viewers), and a ``POST``
or ``DELETE`` is a broadcaster's call: its own URLs.
"""

from __future__ import annotations

import hmac
import json
import os
import re
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from fbstream.live.login import Sessions
from fbstream.live.tokens import KeyRing
from fbstream.ratelimit import KeyedBuckets
from fbstream.registry.base import RegistryUnavailable, VideoPage
from fbstream.registry.records import VideoRecord, VideoState, VideoStatus

VIDEO_ID = re.compile(r"^[a-f0-9]{16}$")
MAX_BODY = 16 * 1024


@attrs.frozen
class APISettings:
    api_key: str
    datacenter: str
    token_ttl: float
    rtmp_url: str
    rtmps_url: str
    playback_url: str
    #: Live videos one caller (the key, or the browser sessions) may create
    #: per second, and in a burst.
    create_rate: float = 1.0
    create_burst: int = 10


#: Videos per page of the list, by default and at most.
PAGE = 100
MAX_PAGE = 1000


def load_api_key(path: str, environ: dict[str, str] | None = None) -> str | None:
    if path:
        with open(path) as f:
            key = f.read().strip()
    else:
        key = (environ if environ is not None else os.environ).get("FBSTREAM_API_KEY", "").strip()
    return key or None


class LiveVideosResource(Resource):
    isLeaf = True
    log = Logger()

    def __init__(self, registry: Any, keys: KeyRing, settings: APISettings, clock: IReactorTime,
                 sessions: Sessions | None = None,
                 pops_for: Callable[[str, bool], Deferred[list[tuple[str, str]]]] | None = None) -> None:
        super().__init__()
        self.sessions = sessions
        self.pops_for = pops_for
        self.creating = KeyedBuckets(settings.create_rate, settings.create_burst, max_keys=64)
        self.registry = registry
        self.keys = keys
        self.settings = settings
        self.clock = clock

    def render(self, request: Request) -> bytes | int:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        auth = request.getHeader(b"authorization") or b""
        signed_in = self.sessions is not None and self.sessions.authenticated(request)
        scheme, _, key = auth.partition(b" ")
        # The scheme's name is case-insensitive (RFC 9110, 11.1).
        if not signed_in and not (scheme.lower() == b"bearer"
                                  and hmac.compare_digest(key, self.settings.api_key.encode())):
            request.setHeader(b"www-authenticate", b'Bearer realm="fbstream"')
            return _json(request, 401, {"error": "a valid API key is required (Authorization: Bearer <key>)"})
        parts = [p for p in request.postpath or [] if p]
        if len(parts) > 1:
            return _json(request, 404, {"error": "no such URL"})
        video_id = parts[0].decode("ascii", "replace") if parts else None
        if video_id is not None and not VIDEO_ID.match(video_id):
            return _json(request, 404, {"error": "no such live video"})
        method = request.method
        gone: list[bool] = []  # the caller hung up: nothing may be written
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        if method == b"POST" and video_id is None:
            wait = self.creating.take("session" if signed_in else "key", self.clock.seconds())
            if wait:
                request.setHeader(b"retry-after", b"%d" % (max(1, round(wait)),))
                return _json(request, 429, {"error": "too many live videos created; try again in %d s"
                                                     % (max(1, round(wait)),)})
            d = self._create(request)
        elif method == b"GET":
            d = self._show(request, video_id) if video_id else self._list(request)
        elif method == b"DELETE" and video_id is not None:
            d = self._end(request, video_id)
        else:
            request.setHeader(b"allow", b"GET, POST" if video_id is None else b"GET, DELETE")
            return _json(request, 405, {"error": "method not allowed"})

        def send(answer: tuple[int, Any]) -> None:
            # Each call answers (status, value) once the registry has; by
            # then the caller may have hung up (twisted.web refuses to finish).
            if not request.finished and not gone:
                request.write(_json(request, *answer))
                request.finish()

        def failed(failure: Any) -> None:
            # 503 (try again) only when the registry could not be reached;
            # anything else is a bug here, a 500, logged with its traceback.
            if failure.check(RegistryUnavailable):
                self.log.warn("live API call: {error}", error=failure.getErrorMessage())
                send((503, {"error": "the registry is unavailable"}))
            else:
                self.log.failure("live API call failed", failure)
                send((500, {"error": "internal error"}))

        d.addCallback(send)
        d.addErrback(failed)
        return NOT_DONE_YET

    def _playback(self, request: Request, place: bool) -> Deferred[tuple[str, str | None]]:
        """
        The base of a viewer's playback URLs, and the PoP it names (None:
        this PoP's ``api.playback_url``); ``place``: the viewer is placed
        (the balancer is asked), else its network's last map is used.
        """
        address = getattr(request.getClientAddress(), "host", None)
        if self.pops_for is None or not isinstance(address, str):
            return succeed((self.settings.playback_url, None))

        def first(pops: list[tuple[str, str]]) -> tuple[str, str | None]:
            if not pops:
                return self.settings.playback_url, None
            name, url = pops[0]
            return url, name
        return self.pops_for(address, place).addCallback(first)

    def _describe(self, record: VideoRecord, state: VideoState | None,
                  token: str | None = None, playback: tuple[str, str | None] | None = None) -> dict[str, Any]:
        s = self.settings
        base, pop = playback or (s.playback_url, None)
        vid = record.id
        if record.ended:
            status = VideoStatus.ENDED
        else:
            status = state.status if state is not None else VideoStatus.CREATED
        out: dict[str, Any] = {
            "id": vid,
            "status": status.value,
            "datacenter": record.dc,
            "title": record.title,
            "created": record.created,
            "playback": {
                "dash": "%s/live/%s/manifest.mpd" % (base, vid),
                "hls": "%s/live/%s/master.m3u8" % (base, vid),
            },
        }
        if pop is not None:
            out["playback"]["pop"] = pop
        if state is not None and state.encoder:
            out["encoder"] = state.encoder
            out["fence"] = state.fence
        if token is not None:
            key = "%s?token=%s" % (vid, token)
            out["stream_key"] = key
            out["token"] = token
            # OBS's "Server" and "Stream Key" are server and stream_key.
            out["ingest"] = {"server": s.rtmp_url, "rtmp": "%s/%s" % (s.rtmp_url, key)}
            if s.rtmps_url:
                out["ingest"]["rtmps_server"] = s.rtmps_url
                out["ingest"]["rtmps"] = "%s/%s" % (s.rtmps_url, key)
        return out

    @inlineCallbacks
    def _create(self, request: Request) -> Any:
        body = request.content.read(MAX_BODY + 1) if request.content is not None else b""
        title = ""
        if body.strip():
            try:
                parsed = json.loads(body) if len(body) <= MAX_BODY else None
            except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
                parsed = None
            if not isinstance(parsed, dict) or not isinstance(parsed.get("title", ""), str):
                return 400, {"error": "the body must be a JSON object like {\"title\": \"...\"}"}
            title = parsed.get("title", "")[:200]
        now = self.clock.seconds()
        vid = os.urandom(8).hex()
        record = VideoRecord(vid, self.settings.datacenter, now, title)
        yield self.registry.create_video(vid, record)
        token = self.keys.sign(vid, self.settings.datacenter, now, self.settings.token_ttl)
        out = self._describe(record, None, token)
        out["token_expires"] = now + self.settings.token_ttl
        request.setHeader(b"location", b"/api/v1/live_videos/" + vid.encode())
        return 201, out

    @inlineCallbacks
    def _list(self, request: Request) -> Any:
        """
        Newest first, a page at a time: ``?limit=<n>`` (100, at most 1000) and
        ``?after=<id>``; the registry reads only the page.
        """
        args: dict[bytes, list[bytes]] = request.args or {}
        try:
            limit = int((args.get(b"limit") or [b"%d" % (PAGE,)])[0])
        except ValueError:
            limit = 0
        after = (args.get(b"after") or [b""])[0].decode("ascii", "replace")
        if not 1 <= limit <= MAX_PAGE or (after and not VIDEO_ID.match(after)):
            return 400, {"error": "limit is 1 to %d; after is a video id" % (MAX_PAGE,)}
        page: VideoPage = yield self.registry.list_videos(limit, after or None)
        playback = (yield self._playback(request, False)) if page.videos else None
        out: dict[str, Any] = {"live_videos": [self._describe(v.record, v.state, playback=playback)
                                               for v in page.videos]}
        if page.more:
            out["next"] = "/api/v1/live_videos?limit=%d&after=%s" % (limit, page.videos[-1].record.id)
        return 200, out

    @inlineCallbacks
    def _show(self, request: Request, vid: str) -> Any:
        record = yield self.registry.get_video(vid)
        if record is None:
            return 404, {"error": "no such live video"}
        state = yield self.registry.read_state(vid)
        playback = yield self._playback(request, True)
        return 200, self._describe(record, state, playback=playback)

    @inlineCallbacks
    def _end(self, request: Request, vid: str) -> Any:
        record = yield self.registry.get_video(vid)
        if record is None:
            return 404, {"error": "no such live video"}
        record = record.end(self.clock.seconds())
        yield self.registry.put_video(vid, record)
        return 200, self._describe(record, None)


def _json(request: Request, code: int, value: Any) -> bytes:
    request.setResponseCode(code)
    return json.dumps(value, indent=1).encode() + b"\n"
