"""The load generator's HTTP/1.1 response reader: every framing, split anywhere, and broken ones refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fbstream.load.client import MAX_HEAD, ProtocolError, ResponseReader


def read(data: bytes, cuts: list[int], keep: bool = True) -> tuple[ResponseReader, bytes | None]:
    """``data`` fed in pieces cut at ``cuts``: the reader, and what it left over (None: not over)."""
    reader = ResponseReader(keep)
    rest = None
    at = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        piece, at = data[at:cut], cut
        if piece:
            rest = reader.feed(piece)
            if rest is not None:
                return reader, rest + data[at:]
    return reader, rest


LENGTH = b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nCache-Control: public, max-age=7\r\nContent-Length: 10\r\n\r\n" \
    b"0123456789"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nmoof\r\n6\r\nmdat01\r\n0\r\nX-Trailer: 1\r\n\r\n"


@given(st.lists(st.integers(min_value=0, max_value=len(LENGTH)), max_size=20))
def test_a_content_length_body_split_anywhere(cuts: list[int]) -> None:
    reader, rest = read(LENGTH + b"HTTP/1.1 next", cuts)
    assert rest == b"HTTP/1.1 next"
    assert (reader.status, reader.size, reader.max_age, reader.close) == (200, 10, 7.0, False)
    assert b"".join(reader.body or []) == b"0123456789"


@given(st.lists(st.integers(min_value=0, max_value=len(CHUNKED)), max_size=30))
def test_a_chunked_body_split_anywhere(cuts: list[int]) -> None:
    reader, rest = read(CHUNKED, cuts)
    assert rest == b""
    assert reader.size == 10 and b"".join(reader.body or []) == b"moofmdat01"


def test_a_body_not_kept_is_counted() -> None:
    reader, _ = read(LENGTH, [], keep=False)
    assert reader.size == 10 and reader.body is None


def test_a_body_to_the_close_and_an_http_1_0_answer_close_the_connection() -> None:
    reader, rest = read(b"HTTP/1.1 200 OK\r\n\r\nabc", [])
    assert rest is None and reader.closed() and reader.size == 3 and reader.close
    reader, rest = read(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n", [])
    assert rest == b"" and reader.status == 404 and reader.close


def test_a_cut_off_body_is_not_whole_when_the_connection_closes() -> None:
    reader, rest = read(LENGTH[:-3], [])
    assert rest is None and not reader.closed()


@pytest.mark.parametrize("answer", [
    b"SPDY/3 200 OK\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 2000,
    b"HTTP/1.1 200 OK\r\nX: " + b"a" * (MAX_HEAD + 10),
])
def test_a_broken_answer_is_refused(answer: bytes) -> None:
    with pytest.raises(ProtocolError):
        read(answer, [])


@given(st.binary(max_size=300))
def test_any_bytes_are_read_or_refused_never_anything_else(data: bytes) -> None:
    try:
        read(b"HTTP/1.1 200 OK\r\n" + data, [7, 40])
    except ProtocolError:
        pass


def test_a_long_head_and_headers_in_any_case() -> None:
    data = (b"HTTP/1.1 302 Found\r\nX-Pad: " + b"p" * 3000 + b"\r\nLOCATION: http://b:8/x \r\n"
            b"content-LENGTH:3\r\nCache-Control: public, max-age=2\r\n\r\nabc")
    for cuts in ([], [20], [3100]):
        reader, rest = read(data, cuts)
        assert rest == b"" and reader.status == 302 and reader.location == b"http://b:8/x"
        assert (reader.size, reader.max_age, b"".join(reader.body or [])) == (3, 2.0, b"abc")
