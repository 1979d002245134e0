"""AMF0: known encodings, round trips, and hostile input."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fbstream.rtmp import amf0
from fbstream.rtmp.errors import AMFError


def test_known_encodings():
    assert amf0.encode(1.0) == b"\x00\x3f\xf0\x00\x00\x00\x00\x00\x00"
    assert amf0.encode(True, None) == b"\x01\x01\x05"
    assert amf0.encode("ab") == b"\x02\x00\x02ab"
    assert amf0.encode({"a": 1.0}) == b"\x03\x00\x01a\x00\x3f\xf0" + b"\x00" * 6 + b"\x00\x00\x09"
    assert amf0.encode(amf0.ECMAArray({})) == b"\x08\x00\x00\x00\x00\x00\x00\x09"


def test_decodes_what_ffmpeg_sends_in_connect():
    payload = amf0.encode(
        "connect", 1.0,
        {"app": "live", "type": "nonprivate", "flashVer": "FMLE/3.0", "tcUrl": "rtmp://h/live"},
    )
    assert amf0.decode_all(payload) == [
        "connect", 1.0,
        {"app": "live", "type": "nonprivate", "flashVer": "FMLE/3.0", "tcUrl": "rtmp://h/live"},
    ]


def test_long_string_date_undefined_strict_array():
    long = "x" * 70000
    values = [long, amf0.Date(1.5e12, 0), amf0.UNDEFINED_VALUE, [1.0, "a", None]]
    assert amf0.decode_all(amf0.encode(*values)) == values
    assert amf0.encode(long)[0] == amf0.LONG_STRING


amf_values = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False)
    | st.text(max_size=50)
    | st.just(amf0.UNDEFINED_VALUE),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5)
    | st.builds(amf0.ECMAArray, st.dictionaries(st.text(max_size=10), children, max_size=5)),
    max_leaves=20,
)


@given(st.lists(amf_values, max_size=5))
def test_round_trip(values):
    assert amf0.decode_all(amf0.encode(*values)) == values


def test_nan_round_trips():
    (value,) = amf0.decode_all(amf0.encode(float("nan")))
    assert math.isnan(value)


@given(st.lists(amf_values, min_size=1, max_size=3), st.data())
def test_truncation_is_a_clean_error(values, data):
    encoded = amf0.encode(*values)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    try:
        amf0.decode_all(encoded[:cut])
    except AMFError:
        pass


@given(st.binary(max_size=200))
def test_garbage_is_a_clean_error(blob):
    try:
        amf0.decode_all(blob)
    except AMFError:
        pass


def test_nesting_bomb_refused():
    bomb = b"\x03\x00\x01a" * 10000
    with pytest.raises(AMFError, match="nesting"):
        amf0.decode_all(bomb)
    with pytest.raises(AMFError, match="nesting"):
        amf0.decode_all(b"\x0a\x00\x00\x00\x01" * 10000)


def test_strict_array_count_lie_refused():
    with pytest.raises(AMFError, match="claims"):
        amf0.decode_all(b"\x0a\xff\xff\xff\xff\x05")


def test_amf3_switch_refused():
    with pytest.raises(AMFError, match="AMF3"):
        amf0.decode_all(b"\x11\x04\x01")


def test_unknown_marker_refused():
    with pytest.raises(AMFError, match="marker 0x0d"):
        amf0.decode_all(b"\x0d")
