"""
``fbstream-broadcast``: go live from a file, a camera or a test pattern,
with the upload fitted to the network, and see the viewers' comments and
reactions as they come.

Go live through the live API (it creates the live video and gives the
ingest URL)::

    FBSTREAM_API_KEY=... fbstream-broadcast --api http://HOST:8080 --title "Hello"

or publish to an ingest URL you have (the page's, or the API's
``ingest.rtmps``), with ``--pop`` naming where viewers watch, for the comments::

    fbstream-broadcast --url 'rtmps://HOST:1936/live/ID?token=...' --pop http://HOST:8080

Each second it prints what it sends and what comes back: the rate the
server acknowledges, the video bitrate it chose and why, its queue, the
viewers and the reactions; each comment as it comes. ``--json`` prints the
same as one JSON object a line, for scripts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import unicodedata
from typing import Any

import treq
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.web.http_headers import Headers

from fbstream.broadcast.encode import Encoder
from fbstream.broadcast.publish import Broadcast, IngestURL, URLError
from fbstream.broadcast.rate import UploadRate
from fbstream.broadcast.sources import SourceError, open_source

log = Logger()

#: Seconds a comments request may take (the server holds one up to 2 s early).
COMMENTS_TIMEOUT = 5.0


def shown(text: str, limit: int = 500) -> str:
    """
    A viewer's text as a terminal shows it: as text. Control characters
    (escape sequences that would move the cursor, retitle the window or
    worse) become visible escapes; the length is bounded.
    """
    out = []
    for ch in text[:limit]:
        if unicodedata.category(ch) in ("Cc", "Cf") and ch != " ":
            out.append("\\u%04x" % (ord(ch),) if ord(ch) <= 0xFFFF else "\\U%08x" % (ord(ch),))
        else:
            out.append(ch)
    return "".join(out)


class Display:
    """The status line each second, and the comments and reactions read since the last."""

    def __init__(self, broadcast: Broadcast, encoder: Encoder, json_lines: bool, out: Any = None) -> None:
        self.broadcast = broadcast
        self.encoder = encoder
        self.json_lines = json_lines
        self.out = out or sys.stdout
        self.began = time.monotonic()
        self.reactions: dict[str, int] = {}
        self.viewers: int | None = None
        self._acked = 0
        self._at = time.monotonic()

    def comment(self, name: str, text: str, at: float | None = None) -> None:
        """A comment, shown as it arrives."""
        name, text = shown(name, 64) or "viewer", shown(text)
        if self.json_lines:
            self.out.write(json.dumps({"t": round(time.monotonic() - self.began, 1),
                                       "comment": {"name": name, "text": text, "at": at}}) + "\n")
        else:
            self.out.write("        %s: %s\n" % (name, text))
        self.out.flush()

    def reacted(self, kind: str, count: int) -> None:
        key = shown(kind, 16)
        if key in self.reactions or len(self.reactions) < 16:
            self.reactions[key] = self.reactions.get(key, 0) + max(0, int(count))

    def show(self) -> None:
        now = time.monotonic()
        acked = self.broadcast.acknowledged
        upload = (acked - self._acked) * 8 / max(1e-3, now - self._at)
        self._acked, self._at = acked, now
        rate = self.broadcast.rate
        line: dict[str, Any] = {
            "t": round(now - self.began, 1),
            "state": "live" if self.broadcast.live else "connecting",
            "upload_kbps": round(upload / 1000),
            "sending_kbps": round(rate.sending / 1000),
            "video_kbps": self.encoder.bitrate // 1000,
            "link_kbps": round(rate.measured / 1000),
            "queue_s": round(rate.queue, 2),
            "ceiling_kbps": round(rate.ceiling / 1000),
            "viewers": self.viewers,
            "connections": self.broadcast.connections,
            "dropped_tags": self.broadcast.dropped_tags,
            "reactions": self.reactions,
        }
        reactions, self.reactions = self.reactions, {}
        if self.json_lines:
            self.out.write(json.dumps(line) + "\n")
        else:
            self.out.write("%6.1fs %-10s upload %6.0f kbit/s  video %5d kbit/s  queue %4.2f s  viewers %s%s\n" % (
                line["t"], line["state"], upload / 1000, line["video_kbps"], rate.queue,
                "-" if self.viewers is None else self.viewers,
                "" if line["video_kbps"] else "  (audio only)"))
            if reactions:
                self.out.write("        reactions: %s\n" % (
                    ", ".join("%s %d" % kv for kv in sorted(reactions.items())),))
        self.out.flush()


@inlineCallbacks
def read_comments(reactor: Any, base: str, video_id: str, display: Display, running: list[bool]) -> Any:
    """The live video's comments track, a second at a time, as the page reads it."""
    n = math.floor(time.time()) - 2
    url = "%s/live/%s/comments/%%d.json" % (base.rstrip("/"), video_id)
    while running:
        code = 0
        try:
            response = yield treq.get(url % (n,), timeout=COMMENTS_TIMEOUT, reactor=reactor)
            code = response.code
            body = yield response.content()
        except Exception:
            body = b""
        if code == 200:
            try:
                doc = json.loads(body)
            except ValueError:
                doc = {}
            for c in doc.get("comments") or []:
                if isinstance(c, dict):
                    at = c.get("at")
                    display.comment(str(c.get("name") or ""), str(c.get("text") or ""),
                                    at if isinstance(at, (int, float)) else None)
            for kind, count in (doc.get("reactions") or {}).items():
                if isinstance(count, int):
                    display.reacted(str(kind), count)
            if isinstance(doc.get("viewers"), int):
                display.viewers = doc["viewers"]
            n += 1
            continue
        yield deferLater(reactor, 0.5, lambda: None)
        if code != 404 or n < math.floor(time.time()) - 3:
            n = math.floor(time.time()) - 2


@inlineCallbacks
def go_live(reactor: Any, api: str, key: str, title: str, tls: bool) -> Any:
    """Create a live video; its id, ingest URL and where viewers watch."""
    response = yield treq.post(api.rstrip("/") + "/api/v1/live_videos", json.dumps({"title": title}).encode(),
                               headers=Headers({b"authorization": [b"Bearer " + key.encode()],
                                                b"content-type": [b"application/json"]}),
                               timeout=30, reactor=reactor)
    body = yield response.content()
    if response.code != 201:
        raise RuntimeError("the live API answered %d: %s" % (response.code, body.decode(errors="replace")[:300]))
    video = json.loads(body)
    ingest = video["ingest"].get("rtmps" if tls else "rtmp") or video["ingest"]["rtmp"]
    watch = video["playback"]["dash"].rsplit("/live/", 1)[0]
    return video["id"], ingest, watch


@inlineCallbacks
def end_video(reactor: Any, api: str, key: str, video_id: str) -> Any:
    response = yield treq.delete("%s/api/v1/live_videos/%s" % (api.rstrip("/"), video_id),
                                 headers=Headers({b"authorization": [b"Bearer " + key.encode()]}),
                                 timeout=10, reactor=reactor)
    yield response.content()
    if response.code != 200:
        raise RuntimeError("the live API answered %d" % (response.code,))
    log.info("live video {id} ended: its replay is at the same URLs", id=video_id)


def parse_size(value: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError("a size is WIDTHxHEIGHT, like 1280x720") from None
    if not (16 <= width <= 7680 and 16 <= height <= 4320) or width % 2 or height % 2:
        raise argparse.ArgumentTypeError("%dx%d: even sizes from 16x16 to 7680x4320" % (width, height))
    return width, height


def kbit(value: str) -> int:
    try:
        return int(float(value.lower().rstrip("k")) * 1000)
    except ValueError:
        raise argparse.ArgumentTypeError("a bitrate in kbit/s, like 2500") from None


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fbstream-broadcast", description=__doc__.split("\n\n")[0].strip())
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--api", help="the live API's base URL (http://HOST:8080): go live through it")
    where.add_argument("--url", help="an ingest URL with its stream key: rtmp[s]://HOST[:PORT]/live/KEY")
    parser.add_argument("--api-key-file", help="the API key (else $FBSTREAM_API_KEY)")
    parser.add_argument("--title", default="", help="the live video's title (with --api)")
    parser.add_argument("--rtmp", action="store_true", help="with --api: publish over RTMP, not RTMPS")
    parser.add_argument("--keep-open", action="store_true",
                        help="with --api: leave the live video open when this stops (else it ends, a replay)")
    parser.add_argument("--pop", help="where viewers watch (http://HOST:8080), to read the comments; "
                        "with --api, the API's playback URL")
    parser.add_argument("--video-id", help="the live video's id, for the comments (default: the stream key's)")
    parser.add_argument("--source", default="pattern", help="pattern, file:PATH (looped) or v4l2:/dev/videoN")
    parser.add_argument("--size", type=parse_size, default=(1280, 720), help="WIDTHxHEIGHT (1280x720)")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--bitrate", type=kbit, default=2_500_000, help="the most video kbit/s (2500)")
    parser.add_argument("--start-bitrate", type=kbit, default=None, help="video kbit/s to start at (the most)")
    parser.add_argument("--floor", type=kbit, default=200_000,
                        help="the least video kbit/s; below it audio goes alone (200)")
    parser.add_argument("--audio-bitrate", type=kbit, default=64_000, help="AAC kbit/s (64)")
    parser.add_argument("--preset", default="veryfast", help="x264 preset (veryfast)")
    parser.add_argument("--duration", type=float, default=None, help="seconds to broadcast (default: until ^C)")
    parser.add_argument("--ca", help="a PEM certificate to trust for RTMPS (default: the system's)")
    parser.add_argument("--json", action="store_true", help="one JSON object a line")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = arguments().parse_args(argv)
    if not 1 <= args.fps <= 120:
        print("fbstream-broadcast: --fps is 1 to 120", file=sys.stderr)
        return 2
    if not 0 < args.floor <= args.bitrate:
        print("fbstream-broadcast: --floor must be above 0 and at most --bitrate", file=sys.stderr)
        return 2
    from twisted.internet import reactor

    outcome: list[int] = []
    reactor.callWhenRunning(_run, reactor, args, outcome)
    reactor.run()
    return outcome[0] if outcome else 1


@inlineCallbacks
def _run(reactor: Any, args: argparse.Namespace, outcome: list[int]) -> Any:
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    broadcast = encoder = None
    key = ""
    try:
        watch, video_id = args.pop, args.video_id
        if args.api:
            key = _api_key(args.api_key_file)
            video_id, url, api_watch = yield go_live(reactor, args.api, key, args.title, tls=not args.rtmp)
            watch = watch or api_watch
            log.info("live video {id}: {url}", id=video_id, url=url.split("?")[0])
        else:
            url = args.url
        ingest = IngestURL.parse(url)
        video_id = video_id or ingest.key.split("?")[0].rsplit("/", 1)[-1]
        width, height = args.size
        source = open_source(args.source, width, height, args.fps)
        rate = UploadRate(args.bitrate, args.floor, args.audio_bitrate,
                          video=args.start_bitrate or args.bitrate)
        tags: list[Any] = []  # the broadcast, once made, takes the encoder's tags
        encoder = Encoder(source, lambda made: reactor.callFromThread(tags[0], made),
                          width=width, height=height, rate=args.fps, maximum=args.bitrate,
                          bitrate=rate.video, audio_bitrate=args.audio_bitrate, preset=args.preset)
        broadcast = Broadcast(reactor, ingest, encoder, rate, tls_options=_tls(ingest, args.ca))
        tags.append(broadcast.tags)
        display = Display(broadcast, encoder, args.json)
        broadcast.start()
        encoder.start()
        running = [True]
        if watch:
            read_comments(reactor, watch, video_id, display, running)
        LoopingCall(display.show).start(1.0, now=False)
        watchdog = LoopingCall(_check_encoder, encoder, broadcast)
        watchdog.start(0.5, now=False)
        ending: list[Deferred[Any]] = []

        def finish() -> Deferred[Any]:
            # The broadcast's end, and with --api the live video's: it
            # becomes its replay (unless --keep-open: a broadcaster to come back).
            if not ending:
                d = broadcast.stop()
                if args.api and not args.keep_open:
                    d.addCallback(lambda _: end_video(reactor, args.api, key, video_id))
                    d.addErrback(lambda f: log.warn("could not end the live video: {why}",
                                                    why=f.getErrorMessage()))
                ending.append(d)
            return ending[0]

        if args.duration is not None:
            reactor.callLater(args.duration, finish)
        stop_on_signal = reactor.addSystemEventTrigger("before", "shutdown", finish)
        yield broadcast.done
        reactor.removeSystemEventTrigger(stop_on_signal)
        running.clear()
        # ``done`` fires as the broadcast stops, before the live video's end
        # (asked of the API after it) is over: that is waited for too, or the
        # reactor would stop under it.
        if ending:
            yield ending[0]
        outcome.append(0)
    except (URLError, SourceError, RuntimeError, OSError, ValueError, KeyError) as e:
        print("fbstream-broadcast: %s" % (e,), file=sys.stderr)
        outcome.append(1)
    except Exception as e:
        print("fbstream-broadcast: %s" % (getattr(e, "description", None) or e,), file=sys.stderr)
        outcome.append(1)
    finally:
        if encoder is not None:
            yield deferToThreadOrNow(reactor, encoder.stop)
        if reactor.running:
            reactor.stop()


def deferToThreadOrNow(reactor: Any, fn: Any) -> Deferred[Any]:
    from twisted.internet.threads import deferToThreadPool

    return deferToThreadPool(reactor, reactor.getThreadPool(), fn)


def _check_encoder(encoder: Encoder, broadcast: Broadcast) -> None:
    """The encoder's thread ended by itself: the source failed, or ran out."""
    if encoder.thread is not None and not encoder.thread.is_alive() and not broadcast.done.called:
        error = encoder.error
        broadcast.stop(RuntimeError("the source or encoder failed: %s" % (error,)) if error is not None else None)


def _api_key(path: str | None) -> str:
    if path:
        with open(path) as f:
            key = f.read().strip()
    else:
        key = os.environ.get("FBSTREAM_API_KEY", "").strip()
    if not key:
        raise RuntimeError("give --api-key-file or set $FBSTREAM_API_KEY")
    return key


def _tls(ingest: IngestURL, ca: str | None) -> Any:
    if not ingest.tls:
        return None
    from twisted.internet.ssl import Certificate, optionsForClientTLS

    if ca is None:
        return optionsForClientTLS(ingest.host)
    with open(ca, "rb") as f:
        return optionsForClientTLS(ingest.host, trustRoot=Certificate.loadPEM(f.read()))


if __name__ == "__main__":
    sys.exit(main())
