"""The broadcaster's sans-IO parts: the upload rate, its simulation, the FLV splitter, URLs, and what a terminal shows."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fbstream.broadcast import simulate
from fbstream.broadcast.cli import shown
from fbstream.broadcast.publish import IngestURL, URLError, _is_header, _is_keyframe
from fbstream.broadcast.rate import ACKS_PER_SECOND, LEAST_ACK_WINDOW, ObsDynamicBitrate, UploadRate, ack_window
from fbstream.rtmp import messages as m
from fbstream.rtmp.chunk import Message
from fbstream.rtmp.connection import ClientConnection
from fbstream.rtmp.errors import ProtocolError
from fbstream.rtmp.flv import FileTags, file_header, file_tag, read_file

STEPS = [(0, 4_000_000), (20, 1_000_000), (50, 4_000_000)]


def test_the_upload_comes_under_a_narrower_link_within_two_seconds_and_climbs_back():
    samples = simulate.run("ours", STEPS, 85, maximum=2_000_000)
    down, up = simulate.figures(samples, STEPS, maximum=2_000_000)
    assert down.converged is not None and down.converged <= 2.0, down
    assert down.worst_delay < 1.0 and down.overshoot_kbps <= 150, down
    assert down.used > 0.85, down  # it does not settle far under the link
    assert up.converged is not None and up.converged <= 20.0, up


def test_obs_constants_on_the_same_steps_wait_seconds_behind_the_socket_buffer():
    samples = simulate.run("obs", STEPS, 85, maximum=2_000_000)
    down, _ = simulate.figures(samples, STEPS, maximum=2_000_000)
    ours, _ = simulate.figures(simulate.run("ours", STEPS, 85, maximum=2_000_000), STEPS, maximum=2_000_000)
    # OBS's trigger sees its own packet queue only, after the kernel's buffer filled.
    assert down.worst_delay > 3 * ours.worst_delay, (down, ours)


def test_under_the_floor_the_video_stops_and_comes_back_at_the_floor():
    steps = [(0, 4_000_000), (10, 150_000), (40, 4_000_000)]
    samples = simulate.run("ours", steps, 70, maximum=2_000_000, floor=200_000)
    narrow = [s.video for s in samples if 15 <= s.t < 40]
    # Audio alone, but for a try at the floor now and then (every 5 s clean).
    assert narrow and set(narrow) == {0, 200_000} and narrow.count(0) > 0.6 * len(narrow), sorted(set(narrow))
    assert any(s.video == 200_000 for s in samples if s.t >= 40)
    assert samples[-1].video > 1_000_000


def test_a_drop_at_most_halves_the_bitrate():
    rate = UploadRate(2_000_000, 200_000, 64_000)
    rate.reset(0.0)
    sent = acked = 0
    changes = []
    for tick in range(1, 40):
        now = tick * 0.25
        sent += 2_064_000 // 8 // 4
        acked += 20_000 // 8 // 4  # a link that all but stopped
        change = rate.tick(now, sent, acked)
        if change is not None:
            changes.append(change.video)
    assert changes[:3] == [1_000_000, 500_000, 250_000], changes
    assert changes[-1] == 0  # then audio alone
    assert rate.should_drop()


def test_a_clean_link_is_probed_up_to_the_maximum_and_no_further():
    rate = UploadRate(2_000_000, 200_000, 64_000, video=500_000)
    rate.reset(0.0)
    sent = 0
    for tick in range(1, 200):
        sent += (rate.video + 64_000) // 8 // 4
        rate.tick(tick * 0.25, sent, sent)  # everything arrives at once
    assert rate.video == 2_000_000


def test_the_acknowledgement_window_keeps_acknowledgements_few():
    assert ack_window(100_000) == LEAST_ACK_WINDOW
    assert ack_window(8_000_000) == 8_000_000 // 8 // ACKS_PER_SECOND
    with pytest.raises(ValueError):
        UploadRate(1_000_000, 2_000_000, 64_000)


def test_obs_lowers_to_its_estimate_and_raises_by_a_tenth():
    obs = ObsDynamicBitrate(2_500_000, 64_000)
    assert obs.tick(0.0, 0, 0.0) is None
    change = obs.tick(1.5, 1_500_000 // 8 * 3 // 2, 0.3)  # 1.5 Mbit/s sent, 300 ms queued
    assert change is not None and change.video == 1_400_000
    raised = obs.tick(1.5 + obs.inc_timer, 0, 0.0)
    assert raised is not None and raised.video == 1_650_000


def _stream(tags):
    return file_header() + b"".join(file_tag(t, ts, p) for t, ts, p in tags)


TAGS = st.lists(st.tuples(st.sampled_from([8, 9, 18]), st.integers(0, 2**32 - 1), st.binary(max_size=300)),
                max_size=8)


@given(TAGS, st.integers(1, 50))
def test_the_flv_splitter_gives_the_same_tags_whole_or_in_pieces(tags, piece):
    data = _stream(tags)
    whole = FileTags().feed(data)
    splitter = FileTags()
    pieces = []
    for i in range(0, len(data), piece):
        pieces += splitter.feed(data[i:i + piece])
    assert whole == pieces == [(t, ts, p) for t, ts, p in tags]
    assert splitter.pending == 0
    assert list(read_file(data)) == whole


@given(st.binary(max_size=64))
def test_the_flv_splitter_refuses_what_is_not_flv(data):
    if data[:3] == b"FLV"[: len(data[:3])]:
        return
    with pytest.raises(ProtocolError):
        FileTags().feed(data)


def test_ingest_urls():
    url = IngestURL.parse("rtmps://example.com/live/abc?token=x.y")
    assert (url.tls, url.host, url.port, url.app, url.key) == (True, "example.com", 443, "live", "abc?token=x.y")
    assert url.tc_url == "rtmps://example.com:443/live"
    assert IngestURL.parse("rtmp://10.0.0.1:1940/live/k").port == 1940
    for bad in ("http://x/live/k", "rtmp://x/live", "rtmp:///live/k", "rtmp://x/"):
        with pytest.raises(URLError):
            IngestURL.parse(bad)


def test_headers_and_keyframes_are_told_apart():
    assert _is_header(m.VIDEO, b"\x17\x00\x00\x00\x00")
    assert not _is_header(m.VIDEO, b"\x17\x01\x00\x00\x00")
    assert _is_keyframe(b"\x17\x01\x00\x00\x00") and not _is_keyframe(b"\x27\x01\x00\x00\x00")
    assert _is_header(m.AUDIO, b"\xaf\x00\x12\x10") and not _is_header(m.AUDIO, b"\xaf\x01\x00")
    assert _is_header(m.DATA_AMF0, b"\x02")


def test_a_viewers_text_reaches_the_terminal_as_text():
    assert shown("hello \x1b[31mred\x1b[0m") == "hello \\u001b[31mred\\u001b[0m"
    assert shown("line\nbreak\u202eevil") == "line\\u000abreak\\u202eevil"
    assert shown("<b>not bold</b> ünïcödé") == "<b>not bold</b> ünïcödé"
    assert len(shown("x" * 10_000)) == 500


def test_the_client_counts_what_the_server_acknowledges_past_4_gib():
    conn = ClientConnection("live", "rtmp://x/live")
    conn.peer_acknowledged = 0xFFFF_F000
    conn.acknowledged = 0xFFFF_F000
    conn._message(Message(m.CSID_CONTROL, 0, m.ACKNOWLEDGEMENT, 0, m.u32(0x1000)), [])
    assert conn.acknowledged == 0x1_0000_1000
