"""
The registry's records keep the JSON the dicts before them had, byte for
byte: what older versions wrote to etcd reads back, and is written back the
same, and the live API answers with the same bytes. The texts here are what
that code wrote.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fbstream.live.api import APISettings, LiveVideosResource
from fbstream.live.tokens import KeyRing
from fbstream.registry.memory import MemoryRegistry
from fbstream.registry.records import VideoRecord, VideoState, VideoStatus
from tests.web_helpers import APIRequest, rendered

#: The live API's record as it made it, and after ending it.
CREATED = '{"id": "0123456789abcdef", "dc": "dc1", "created": 1000000.5, "title": "my show", "ended": false}'
ENDED = ('{"id": "0123456789abcdef", "dc": "dc1", "created": 1000000.5, "title": "my show", "ended": true, '
         '"ended_at": 1000060.25}')
#: The state of an interrupted video that came back once: two periods, a
#: video and an audio rendition.
STATE = (
    '{"status": "interrupted", "encoder": "enc-a", "http": "tcp:127.0.0.1:9001", "fence": 3, '
    '"availability_start": 1000000.25, "periods": [{"index": 0, "start_ms": 0, "first_number": 1, '
    '"end_ms": 1000, "base_ms": 0}, {"index": 1, "start_ms": 1000, "first_number": 2, "end_ms": null, '
    '"base_ms": 1000}], "renditions": [{"name": "240p", "kind": "video", "codecs": "avc1.640015", '
    '"bandwidth": 300000, "width": 426, "height": 240, "frame_rate": "30", "sample_rate": 0, '
    '"timescale": 1000}, {"name": "audio", "kind": "audio", "codecs": "mp4a.40.2", "bandwidth": 128000, '
    '"width": 0, "height": 0, "frame_rate": "", "sample_rate": 48000, "timescale": 48000}], '
    '"last_number": 1}'
)


def state(last_number: int = 0, status: VideoStatus = VideoStatus.LIVE, encoder: str = "enc-a") -> VideoState:
    """An owner's state, for the tests of registries that store it."""
    return VideoState(status, encoder, "tcp:127.0.0.1:1", 1, 1000.0, [], [], last_number)


def test_a_new_record_is_written_as_the_api_wrote_it() -> None:
    record = VideoRecord("0123456789abcdef", "dc1", 1000000.5, "my show")
    assert record.to_json() == CREATED
    assert record.end(1000060.25).to_json() == ENDED


@pytest.mark.parametrize("text", [
    CREATED,
    ENDED,
    # A whole number of seconds stays one.
    '{"id": "demo", "dc": "dc1", "created": 1700000000, "title": "demo", "ended": false}',
])
def test_records_read_back_and_write_the_same_bytes(text: str) -> None:
    record = VideoRecord.from_json(text)
    assert record.to_json() == text
    assert VideoRecord.from_json(text.encode()) == record


def test_an_ended_record_reads_as_ended() -> None:
    record = VideoRecord.from_json(ENDED)
    assert (record.ended, record.ended_at, record.title) == (True, 1000060.25, "my show")
    assert not VideoRecord.from_json(CREATED).ended


def test_the_state_reads_back_and_writes_the_same_bytes() -> None:
    state = VideoState.from_json(STATE)
    assert state.status is VideoStatus.INTERRUPTED
    assert (state.encoder, state.http, state.fence, state.last_number) == ("enc-a", "tcp:127.0.0.1:9001", 3, 1)
    assert [p["first_number"] for p in state.periods] == [1, 2]
    assert [r["name"] for r in state.renditions] == ["240p", "audio"]
    assert state.to_json() == STATE


@pytest.mark.parametrize("status", list(VideoStatus))
def test_every_status_is_written_as_its_wire_value(status: VideoStatus) -> None:
    state = VideoState(status, "enc-a", "tcp:127.0.0.1:9001", 1, 5.0, [], [], 0)
    assert state.to_json().startswith('{"status": "%s", ' % (status.value,))
    assert VideoState.from_json(state.to_json()) == state


@pytest.mark.parametrize("text", [
    "[]",
    '{"id": "x", "dc": "dc1"}',
    '{"id": "x", "dc": "dc1", "created": "yesterday"}',
    '{"id": "x", "dc": "dc1", "created": true}',
])
def test_a_malformed_record_is_an_error(text: str) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        VideoRecord.from_json(text)


@pytest.mark.parametrize("text", [
    STATE.replace('"interrupted"', '"paused"'),
    STATE.replace('"periods": [', '"periods": {"0": [').replace('], "renditions"', ']}, "renditions"'),
    '{"status": "live"}',
])
def test_a_malformed_state_is_an_error(text: str) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        VideoState.from_json(text)


#: The live API's answers about that video, as the dicts made them: shown
#: while interrupted, then ended by the API, then listed.
SHOWN = (b'{\n "id": "0123456789abcdef",\n "status": "interrupted",\n "datacenter": "dc1",\n "title": "my show",\n'
         b' "created": 1000000.5,\n "playback": {\n  "dash": "http://127.0.0.1:8080/live/0123456789abcdef/manifest.mpd",'
         b'\n  "hls": "http://127.0.0.1:8080/live/0123456789abcdef/master.m3u8"\n },\n "encoder": "enc-a",\n'
         b' "fence": 3\n}\n')
ENDED_SHOWN = (b'{\n "id": "0123456789abcdef",\n "status": "ended",\n "datacenter": "dc1",\n "title": "my show",\n'
               b' "created": 1000000.5,\n "playback": {\n'
               b'  "dash": "http://127.0.0.1:8080/live/0123456789abcdef/manifest.mpd",\n'
               b'  "hls": "http://127.0.0.1:8080/live/0123456789abcdef/master.m3u8"\n }\n}\n')
LISTED = (b'{\n "live_videos": [\n  {\n   "id": "0123456789abcdef",\n   "status": "ended",\n   "datacenter": "dc1",\n'
          b'   "title": "my show",\n   "created": 1000000.5,\n   "playback": {\n'
          b'    "dash": "http://127.0.0.1:8080/live/0123456789abcdef/manifest.mpd",\n'
          b'    "hls": "http://127.0.0.1:8080/live/0123456789abcdef/master.m3u8"\n   },\n   "encoder": "enc-a",\n'
          b'   "fence": 3\n  }\n ]\n}\n')


class LiveAPIBytes(SynchronousTestCase):
    def test_the_live_api_answers_with_the_same_bytes(self) -> None:
        clock = Clock()
        clock.advance(1000000.5)
        registry = MemoryRegistry(clock, 10)
        settings = APISettings("key", "dc1", 3600, "rtmp://127.0.0.1/live", "", "http://127.0.0.1:8080")
        api = LiveVideosResource(registry, KeyRing.generate(), settings, clock)
        registry.create_video("0123456789abcdef", VideoRecord.from_json(CREATED))
        claim = self.successResultOf(registry.claim("0123456789abcdef", "enc-a", "tcp:127.0.0.1:9001"))
        registry.write_state(claim, VideoState.from_json(STATE))

        def call(method: bytes, path: bytes = b"") -> bytes:
            request = APIRequest(method, path, page=False)
            request.requestHeaders.setRawHeaders(b"authorization", [b"Bearer key"])
            return rendered(api, request)

        self.assertEqual(call(b"GET", b"0123456789abcdef"), SHOWN)
        clock.advance(59.75)
        self.assertEqual(call(b"DELETE", b"0123456789abcdef"), ENDED_SHOWN)
        ended = self.successResultOf(registry.get_video("0123456789abcdef"))
        self.assertEqual(ended.to_json() if ended else None, ENDED)
        self.assertEqual(call(b"GET"), LISTED)
