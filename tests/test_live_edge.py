"""
The encoder's answers at the live edge, on a Clock: requests for segments and
LL-HLS parts that a player may legitimately make before they exist are held
until they do (bounded in time and count), never a 404; blocking playlist
reloads are answered the moment their part exists; the LL-HLS playlist
says what Low-Latency HLS players need; and the other playback URLs say what
the caches in front may keep, and for how long.
"""

from __future__ import annotations

import re
import struct

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET

from fbstream.encoder import fmp4, manifest
from fbstream.encoder.store import LiveVideo
from fbstream.encoder.transcode import RenditionInfo
from fbstream.encoder.web import LiveEdge, LiveResource, VideoRegistry
from fbstream.endings import Ending, EndKind
from fbstream.live.blocking import HLS_EDGE_HEADER
from tests.web_helpers import Request

VIDEO = RenditionInfo("360p", "video", "avc1.64001e", 600_000, 640, 360, "30", timescale=1000)
AUDIO = RenditionInfo("audio", "audio", "mp4a.40.2", 64_000, sample_rate=48000, timescale=48000)


def box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def full(kind: bytes, flags: int, payload: bytes) -> bytes:
    return box(kind, struct.pack(">I", flags) + payload)


def init(timescale: int) -> bytes:
    mdhd = full(b"mdhd", 0, struct.pack(">IIII", 0, 0, timescale, 0) + b"\0" * 4)
    return box(b"ftyp", b"iso6" + b"\0" * 4) + box(b"moov", box(b"trak", box(b"mdia", mdhd)))


def chunk(samples: int, sample_ticks: int, decode_time: int) -> bytes:
    """A moof+mdat whose samples all last ``sample_ticks`` (the tfhd default)."""
    tfhd = full(b"tfhd", 0x020008, struct.pack(">II", 1, sample_ticks))
    tfdt = full(b"tfdt", 0x01000000, struct.pack(">Q", decode_time))
    trun = full(b"trun", 0x000200, struct.pack(">I", samples) + struct.pack(">I", 10) * samples)
    moof = box(b"moof", full(b"mfhd", 0, struct.pack(">I", 1)) + box(b"traf", tfhd + tfdt + trun))
    return moof + box(b"mdat", b"\0" * 10 * samples)


class Req(Request):
    """A GET of ``path`` under ``/live/``, query string and all."""

    def __init__(self, path: str) -> None:
        parts, _, query = path.partition("?")
        super().__init__([p.encode() for p in parts.strip("/").split("/")])
        for pair in filter(None, query.split("&")):
            key, _, value = pair.partition("=")
            self.addArg(key.encode(), value.encode())

    @property
    def code(self) -> int:
        return self.responseCode or 200  # unset means 200, as in twisted.web


class LiveCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.video = LiveVideo("cam", 0.0, 120.0, None, self.clock)
        self.video.add_rendition(VIDEO, init(1000))
        self.video.add_rendition(AUDIO, init(48000))
        self.registry = VideoRegistry()
        self.registry.videos["cam"] = self.video
        self.resource = LiveResource(self.registry, None, self.clock, 250, edge=LiveEdge(2, 3))

    def get(self, path: str) -> Req:
        request = Req("cam/" + path)
        result = self.resource.render(request)
        if result != NOT_DONE_YET:
            request.write(result)
            request.finish()
        return request

    def cut(self, name: str, number: int, parts: int = 4, complete: bool = True) -> None:
        """Segment ``number`` of ``name``: ``parts`` chunks, then its end."""
        ticks, per = (1000, 267) if name == "360p" else (48000, 12 * 1024)
        for i in range(parts):
            self.video.chunk(name, number, chunk(8 if name == "360p" else 12, per // (8 if name == "360p" else 12),
                                                  (number - 1) * ticks + i * per))
        if complete:
            self.video.segment_end(name, number, (number - 1) * 1000, 1000)



class Edge(LiveCase):
    def test_a_segment_just_past_the_edge_is_held_then_streamed(self) -> None:
        self.cut("360p", 1)
        self.cut("audio", 1)
        early = self.get("360p/2.m4s")
        self.assertFalse(early.finished)
        self.assertEqual(self.resource.held, 1)
        self.clock.advance(0.9)
        self.video.chunk("360p", 2, chunk(8, 33, 1000))
        # Streamed as it grows: the first chunk now, the rest as they are cut.
        self.assertEqual(early.code, 200)
        self.assertEqual(early.header(b"x-fbstream-segment"), b"growing")
        self.assertEqual(len(early.written), 1)
        self.assertEqual(self.resource.held, 0)
        self.video.segment_end("360p", 2, 1000, 1000)
        self.assertTrue(early.finished)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_growing_segment_is_sent_as_fast_as_its_client_reads(self) -> None:
        self.cut("360p", 1)
        self.cut("360p", 2, parts=1, complete=False)
        slow, reader = self.get("360p/2.m4s"), self.get("360p/2.m4s")
        self.assertEqual(len(self.resource.streaming), 2)
        slow.producer.pauseProducing()  # its transport is full
        self.cut("360p", 2, parts=2, complete=False)
        self.assertEqual((len(slow.written), len(reader.written)), (1, 3))
        slow.producer.resumeProducing()  # it has read: on from where it was
        self.assertEqual(slow.written, reader.written)
        self.video.segment_end("360p", 2, 1000, 1000)
        self.assertTrue(slow.finished and reader.finished)
        self.assertEqual(self.resource.streaming, set())

    def test_a_client_that_stops_reading_is_dropped(self) -> None:
        from fbstream.encoder.metrics import DROPPED_VIEWERS

        before = DROPPED_VIEWERS._value.get()
        self.resource.stall_timeout = 10.0
        self.cut("360p", 1)
        self.cut("360p", 2, parts=1, complete=False)
        slow = self.get("360p/2.m4s")
        slow.producer.pauseProducing()
        self.clock.advance(9.9)
        self.assertFalse(slow.aborted)
        self.clock.advance(0.1)
        self.assertTrue(slow.aborted)
        self.assertFalse(slow.finished)
        self.assertEqual(DROPPED_VIEWERS._value.get() - before, 1)
        self.assertEqual(self.resource.streaming, set())
        self.assertEqual(self.video.renditions["360p"].segments[2]._listeners, [])

    def test_audio_behind_video_is_held_not_refused(self) -> None:
        # The video rendition has started segment 2; audio has not yet (AAC
        # runs a few frames behind): audio/2.m4s waits for it.
        self.cut("360p", 1)
        self.cut("audio", 1)
        self.cut("360p", 2, parts=1, complete=False)
        audio = self.get("audio/2.m4s")
        self.assertFalse(audio.finished)
        self.cut("audio", 2)
        self.assertEqual(audio.code, 200)
        self.assertTrue(audio.finished)

    def test_far_ahead_is_a_404_no_cache_keeps(self) -> None:
        self.cut("360p", 1)
        far = self.get("360p/4.m4s")
        self.assertEqual(far.code, 404)
        self.assertEqual(far.header(b"cache-control"), b"no-store")
        self.assertEqual(self.resource.held, 0)

    def test_a_held_request_gives_up_after_the_bound(self) -> None:
        self.cut("360p", 1)
        held = self.get("360p/3.m4s")
        self.clock.advance(LiveEdge(2, 3).max_wait - 0.01)
        self.assertFalse(held.finished)
        self.clock.advance(0.02)
        self.assertEqual(held.code, 404)
        self.assertEqual(held.header(b"cache-control"), b"no-store")
        self.assertEqual(self.resource.held, 0)

    def test_holding_is_bounded_in_count(self) -> None:
        self.cut("360p", 1)
        held = [self.get("360p/2.m4s") for _ in range(3)]
        refused = self.get("360p/2.m4s")
        self.assertEqual(refused.code, 503)
        self.assertEqual(refused.header(b"retry-after"), b"1")
        # A viewer who leaves frees its place.
        held[0].processingFailed(Exception("gone"))
        self.assertEqual(self.resource.held, 2)
        self.assertFalse(self.get("360p/2.m4s").finished)

    def test_a_missing_segment_behind_the_edge_is_not_held(self) -> None:
        self.cut("360p", 1)
        self.cut("360p", 3, parts=1, complete=False)  # 2 was never made (dropped video)
        gone = self.get("360p/2.m4s")
        self.assertEqual(gone.code, 404)
        self.assertEqual(gone.header(b"cache-control"), b"public, max-age=1")

    def test_the_end_of_the_broadcast_answers_held_requests(self) -> None:
        self.cut("360p", 1)
        held = self.get("360p/2.m4s")
        self.video.end(Ending(EndKind.PUBLISH_ENDED, "ended"))
        self.assertEqual(held.code, 404)
        self.assertTrue(held.finished)
        self.assertEqual(self.resource.held, 0)


    def test_a_far_ahead_answer_says_where_the_edge_is(self) -> None:
        # The caches in front answer further requests for the stream from it.
        self.cut("360p", 1)
        self.cut("360p", 2, parts=1, complete=False)
        self.clock.advance(0.5)
        for path in ("360p/5.m4s", "360p/9.2.m4s", "audio/5.m4s"):
            far = self.get(path)
            self.assertEqual((far.code, far.header(b"x-fbstream-live-edge")), (404, b"2"), path)
        self.clock.advance(3)  # the manifest's timing makes segment 4 due now
        self.assertEqual(self.get("360p/7.m4s").header(b"x-fbstream-live-edge"), b"4")
        self.assertFalse(self.get("360p/6.m4s").finished)

    def test_a_viewer_who_leaves_while_held_frees_its_place_and_gets_nothing(self) -> None:
        self.cut("360p", 1)
        held = self.get("360p/2.m4s")
        kept = self.get("360p/2.m4s")
        held.leave()
        self.assertEqual(self.resource.held, 1)
        self.video.chunk("360p", 2, chunk(8, 33, 1000))
        self.assertEqual(held.written, [])
        self.assertEqual(len(kept.written), 1)
        self.assertEqual(self.resource.held, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])  # no timer left behind

    def test_a_segment_the_broadcaster_drops_mid_way_is_cut_off_never_finished(self) -> None:
        self.cut("360p", 1)
        self.cut("audio", 1)
        held = self.get("360p/2.m4s")
        self.cut("360p", 2, parts=2, complete=False)
        joined = self.get("360p/2.m4s")
        self.assertEqual((len(held.written), len(joined.written)), (2, 2))
        self.video.close_period()  # the broadcaster is gone; it may come back
        for request in (held, joined):
            self.assertTrue(request.aborted)
            self.assertFalse(request.finished)
        # Later asked for, a failed segment is not held: the next one will be made.
        gone = self.get("360p/2.m4s")
        self.assertEqual(gone.code, 404)
        self.assertEqual(self.resource.held, 0)

    def test_a_viewer_who_leaves_a_growing_segment_is_written_no_more(self) -> None:
        self.cut("360p", 1)
        self.cut("360p", 2, parts=1, complete=False)
        left = self.get("360p/2.m4s")
        left.leave()
        self.cut("360p", 2, parts=3)
        self.assertEqual(len(left.written), 1)
        self.assertEqual(self.get("360p/2.m4s").body(), self.video.renditions["360p"].segments[2].data())


class Playback(LiveCase):
    """The rest of the playback URLs: what caches may keep, and for how long."""

    def test_the_manifests_wait_for_four_segments_then_live_one_second_and_a_minute_once_ended(self) -> None:
        for n in (1, 2, 3):
            self.cut("360p", n)
            self.cut("audio", n)
        starting = self.get("manifest.mpd")
        self.assertEqual((starting.code, starting.header(b"cache-control")), (404, b"public, max-age=1"))
        self.cut("360p", 4)
        self.cut("audio", 4)
        self.clock.advance(4.5)
        for path, kind in (("manifest.mpd", b"application/dash+xml"),
                           ("master.m3u8", b"application/vnd.apple.mpegurl")):
            live = self.get(path)
            self.assertEqual((live.code, live.header(b"content-type"), live.header(b"cache-control")),
                             (200, kind, b"public, max-age=1"), path)
        self.assertIn(b'type="dynamic"', self.get("manifest.mpd").body())
        # Players catch up by playing faster; only one left far behind seeks.
        self.assertIn(b'<Latency target="1200" min="700" max="4200" referenceId="0" />', self.get("manifest.mpd").body())
        self.video.end(Ending(EndKind.PUBLISH_ENDED, "ended"))
        ended = self.get("manifest.mpd")
        self.assertEqual(ended.header(b"cache-control"), b"public, max-age=60")
        self.assertIn(b'type="static"', ended.body())

    def test_a_live_mpd_names_the_steering_server_and_a_base_url_per_pop(self) -> None:
        from xml.etree import ElementTree as ET

        from fbstream.encoder.manifest import Steering

        for n in (1, 2, 3, 4):
            self.cut("360p", n)
            self.cut("audio", n)
        self.clock.advance(4.5)
        self.assertNotIn(b"ContentSteering", self.get("manifest.mpd").body())  # none unless configured
        self.resource.steering = Steering("http://glb:8088/v1/steering",
                                          (("pop1", "http://pop1:8080"), ("pop2", "http://pop2:8080/")))
        ns = {"d": "urn:mpeg:dash:schema:mpd:2011"}
        root = ET.fromstring(self.get("manifest.mpd").body())
        self.assertEqual([(b.get("serviceLocation"), b.text) for b in root.findall("d:BaseURL", ns)],
                         [("pop1", "http://pop1:8080/live/cam/"), ("pop2", "http://pop2:8080/live/cam/")])
        steering = root.find("d:ContentSteering", ns)
        assert steering is not None
        self.assertEqual((steering.text, steering.get("defaultServiceLocation"), steering.get("queryBeforeStart")),
                         ("http://glb:8088/v1/steering", "pop1", "true"))
        # A replay is played from wherever it was found: no steering.
        self.video.end(Ending(EndKind.PUBLISH_ENDED, "ended"))
        self.assertNotIn(b"ContentSteering", self.get("manifest.mpd").body())

    def test_the_manifest_is_published_at_the_clock_s_time_of_its_last_change(self) -> None:
        self.clock.advance(1_800_000_000.0)  # 2027-01-15T08:00:00Z
        self.video.availability_start = self.clock.seconds()
        for n in (1, 2, 3, 4):
            self.clock.advance(1.0)
            self.cut("360p", n)
            self.cut("audio", n)
        self.clock.advance(0.25)  # nothing changes: the manifest is the same
        live = self.get("manifest.mpd").body()
        self.assertIn(b'publishTime="2027-01-15T08:00:04.000Z"', live)
        self.clock.advance(0.5)
        self.video.end(Ending(EndKind.PUBLISH_ENDED, "ended"))
        self.assertIn(b'publishTime="2027-01-15T08:00:04.750Z"', self.get("manifest.mpd").body())

    def test_complete_segments_and_inits_are_immutable(self) -> None:
        self.cut("360p", 1)
        for path, body in (("360p/1.m4s", self.video.renditions["360p"].segments[1].data()),
                           ("360p/init.mp4", init(1000))):
            request = self.get(path)
            self.assertEqual((request.code, request.body()), (200, body), path)
            self.assertEqual(request.header(b"cache-control"), b"public, max-age=31536000, immutable")

    def test_urls_that_name_nothing(self) -> None:
        for path, code in (("360p/x.m4s", 400), ("720p/1.m4s", 404), ("360p/1.m4s/x", 404), ("manifest.xml", 404)):
            request = self.get(path)
            self.assertEqual((request.code, request.header(b"cache-control")), (code, b"public, max-age=1"), path)
        unknown = Req("other/manifest.mpd")
        unknown.write(self.resource.render(unknown))
        self.assertEqual((unknown.code, unknown.header(b"cache-control")), (404, b"public, max-age=2"))
        # Not archived: an ended video's segments past the window are gone.
        self.video.end(Ending(EndKind.PUBLISH_ENDED, "ended"))
        self.assertEqual(self.get("360p/9.m4s").code, 404)


class LowLatencyHLS(LiveCase):
    def test_parts_are_served_once_cut_and_held_before(self) -> None:
        self.cut("360p", 1)
        self.cut("360p", 2, parts=2, complete=False)
        first = self.get("360p/2.1.m4s")
        self.assertEqual(first.code, 200)
        self.assertEqual(first.header(b"cache-control"), b"public, max-age=31536000, immutable")
        self.assertEqual(first.body(), self.video.renditions["360p"].segments[2].chunks[1])
        nxt = self.get("360p/2.2.m4s")
        self.assertFalse(nxt.finished)
        self.video.chunk("360p", 2, chunk(8, 33, 1534))
        self.assertEqual(nxt.body(), self.video.renditions["360p"].segments[2].chunks[2])
        self.assertTrue(nxt.finished)
        # A part past a complete segment's last will never exist.
        self.video.segment_end("360p", 2, 1000, 1000)
        self.assertEqual(self.get("360p/2.3.m4s").code, 404)

    def test_a_blocking_reload_is_answered_when_its_part_exists(self) -> None:
        self.cut("360p", 1)
        self.cut("audio", 1)
        self.cut("360p", 2, parts=1, complete=False)
        blocked = self.get("360p/playlist.m3u8?_HLS_msn=2&_HLS_part=1")
        self.assertFalse(blocked.finished)
        self.clock.advance(0.25)
        self.video.chunk("360p", 2, chunk(8, 33, 1267))
        self.assertTrue(blocked.finished)
        playlist = blocked.body().decode()
        self.assertIn('#EXT-X-PART:DURATION=0.26400,URI="2.1.m4s"', playlist)
        self.assertIn('#EXT-X-PRELOAD-HINT:TYPE=PART,URI="2.2.m4s"', playlist)
        self.assertEqual(blocked.header(b"cache-control"), b"public, max-age=2")
        # Already there: answered at once.
        self.assertTrue(self.get("360p/playlist.m3u8?_HLS_msn=2&_HLS_part=0").finished)
        # A whole segment (no _HLS_part) waits for its end.
        whole = self.get("360p/playlist.m3u8?_HLS_msn=2")
        self.assertFalse(whole.finished)
        self.video.segment_end("360p", 2, 1000, 1000)
        self.assertIn("#EXTINF:1.000,\n2.m4s", whole.body().decode())

    def test_each_playlist_version_says_which_blocking_reloads_it_answers(self) -> None:
        self.assertIsNone(self.get("360p/playlist.m3u8").header(HLS_EDGE_HEADER))  # nothing made: nothing said
        for n in (1, 2, 3):
            self.cut("360p", n)
        self.cut("360p", 4, parts=2, complete=False)
        self.assertEqual(self.get("360p/playlist.m3u8").header(HLS_EDGE_HEADER), b"1-3 4.2")
        blocked = self.get("360p/playlist.m3u8?_HLS_msn=4&_HLS_part=1")
        self.assertEqual((blocked.header(HLS_EDGE_HEADER), blocked.header(b"cache-control")),
                         (b"1-3 4.2", b"public, max-age=2"))
        self.video.segment_end("360p", 4, 3000, 1000)
        self.assertEqual(self.get("360p/playlist.m3u8").header(HLS_EDGE_HEADER), b"1-4")
        # Segment 5 never made (an encoder behind drops it): what is named
        # complete starts after the gap, where has_part holds again.
        self.cut("360p", 6)
        self.assertEqual(self.get("360p/playlist.m3u8").header(HLS_EDGE_HEADER), b"6-6")
        self.video.end(Ending(EndKind.PUBLISH_ENDED, "ended"))
        ended = self.get("360p/playlist.m3u8?_HLS_msn=9")
        self.assertEqual((ended.header(HLS_EDGE_HEADER), ended.header(b"cache-control")),
                         (b"end", b"public, max-age=60"))

    def test_a_blocking_reload_too_far_ahead_is_refused(self) -> None:
        self.cut("360p", 1)
        self.assertEqual(self.get("360p/playlist.m3u8?_HLS_msn=9&_HLS_part=0").code, 400)
        late = self.get("360p/playlist.m3u8?_HLS_msn=3&_HLS_part=0")
        self.clock.advance(LiveEdge().max_wait + 0.01)
        self.assertEqual(late.code, 503)

    def test_the_playlist_says_what_ll_hls_players_need(self) -> None:
        for n in (1, 2, 3, 4):
            self.cut("360p", n)
            self.cut("audio", n)
        self.cut("360p", 5, parts=2, complete=False)
        self.cut("audio", 5, parts=1, complete=False)
        text = self.get("360p/playlist.m3u8").body().decode()
        self.assertIn("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.500", text)
        # Parts are a whole number of frames at or past 250 ms: 8 at 30 fps.
        self.assertIn("#EXT-X-PART-INF:PART-TARGET=0.267", text)
        # Parts of the last three complete segments and of the one being made.
        listed = re.findall(r'URI="(\d+)\.(\d+)\.m4s"', text)
        self.assertEqual(sorted({int(n) for n, _ in listed}), [2, 3, 4, 5])
        self.assertIn('#EXT-X-PART:DURATION=0.26400,URI="5.0.m4s",INDEPENDENT=YES', text)
        self.assertIn('#EXT-X-PART:DURATION=0.26400,URI="5.1.m4s"\n', text)
        self.assertTrue(text.index('URI="4.3.m4s"') < text.index("#EXTINF:1.000,\n4.m4s"))
        self.assertIn('#EXT-X-PRELOAD-HINT:TYPE=PART,URI="5.2.m4s"', text)
        self.assertIn('#EXT-X-RENDITION-REPORT:URI="../audio/playlist.m3u8",LAST-MSN=5,LAST-PART=0', text)
        audio = self.get("audio/playlist.m3u8").body().decode()
        # 12 AAC frames of 1024 samples at 48 kHz, every one independent.
        self.assertIn("#EXT-X-PART-INF:PART-TARGET=0.256", audio)
        self.assertIn('#EXT-X-PART:DURATION=0.25600,URI="5.0.m4s",INDEPENDENT=YES', audio)
        # Once ended: a plain playlist, no parts.
        self.video.end(Ending(EndKind.PUBLISH_ENDED, "ended"))
        ended = self.get("360p/playlist.m3u8").body().decode()
        self.assertNotIn("EXT-X-PART", ended)
        self.assertIn("#EXT-X-ENDLIST", ended)

    def test_chunk_durations(self) -> None:
        self.assertEqual(fmp4.duration(chunk(12, 1024, 0)), 12 * 1024)
        self.assertEqual(fmp4.chunks_of(chunk(1, 1, 0) + chunk(2, 1, 1)), [chunk(1, 1, 0), chunk(2, 1, 1)])
        self.assertEqual(manifest.PARTS_KEPT, 3)


class LateEncoder(LiveCase):
    def test_requests_the_manifest_makes_due_wait_for_a_late_encoder(self) -> None:
        # 10 s into the broadcast the manifest makes segment 11 due, but the
        # encoder (on a busy machine) has only started segment 6: a player
        # asking for 11, or 13 (its clock a little ahead), waits for it.
        for n in range(1, 6):
            self.cut("360p", n)
        self.cut("360p", 6, parts=1, complete=False)
        self.clock.advance(10.2)
        self.assertEqual(self.video.due(self.clock.seconds()), 11)
        waiting = self.get("360p/13.m4s")
        self.assertFalse(waiting.finished)
        self.assertEqual(self.get("360p/14.m4s").code, 404)
        blocked = self.get("360p/playlist.m3u8?_HLS_msn=12&_HLS_part=0")
        self.assertFalse(blocked.finished)
        self.clock.advance(2)
        for n in range(6, 13):
            self.cut("360p", n)
        self.assertTrue(blocked.finished)
        self.cut("360p", 13, parts=1, complete=False)
        self.assertEqual(waiting.code, 200)
        self.assertEqual(len(waiting.written), 1)
