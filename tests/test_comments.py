"""Comments and reactions as a timed track: what a post may be, and each second's document."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fbstream.live.comments import (
    MAX_BODY,
    MAX_TEXT,
    REACTIONS,
    PostError,
    Track,
    parse_comment,
    parse_reaction,
)


def doc_of(track: Track, n: int, now: float) -> bytes:
    document = track.document(n, now)
    assert document is not None
    return document


def test_a_second_s_comments_and_reaction_counts_are_one_document_once_it_is_over():
    track = Track()
    track.comment(100.2, "ann", "first!")
    track.react(100.5, "like")
    track.react(100.7, "like")
    track.react(100.9, "wow")
    track.comment(101.1, "", "next second")
    assert track.document(100, 100.99) is None  # not over: it may still change
    doc = json.loads(doc_of(track, 100, 101.0))
    assert doc == {"second": 100, "comments": [{"name": "ann", "text": "first!", "at": 100.2}],
                   "reactions": {"like": 2, "wow": 1}, "dropped": 0}
    assert track.document(100, 150.0) == track.document(100, 101.0)  # immutable once over
    assert json.loads(doc_of(track, 99, 101.0))["comments"] == []  # a quiet second is an empty document


def test_memory_is_bounded_per_second_and_in_seconds():
    track = Track(keep=3, per_second=2)
    for i in range(5):
        track.comment(10.5, "x", "c%d" % (i,))
    doc = json.loads(doc_of(track, 10, 11))
    assert [c["text"] for c in doc["comments"]] == ["c0", "c1"] and doc["dropped"] == 3
    for n in range(11, 15):
        track.react(n + 0.5, "like")
    assert len(track.seconds) == 3 and track.gone(11) and not track.gone(12)
    assert track.document(10, 20) is None and track.document(11, 20) is None  # gone, not empty
    assert json.loads(doc_of(track, 12, 20))["reactions"] == {"like": 1}


def test_html_is_kept_as_text_and_whitespace_folded_to_one_line():
    assert parse_comment(b'{"text": "<script>alert(1)</script>\\n\\n  hi", "name": " <b>bob</b> "}') == (
        "<b>bob</b>", "<script>alert(1)</script> hi")
    track = Track()
    track.comment(5.0, "<b>bob</b>", "<img src=x onerror=alert(1)>")
    assert json.loads(doc_of(track, 5, 6))["comments"][0]["text"] == "<img src=x onerror=alert(1)>"


@pytest.mark.parametrize("raw, code", [
    (b"x" * (MAX_BODY + 1), 413),
    (json.dumps({"text": "a" * (MAX_TEXT + 1)}).encode(), 413),
    (json.dumps({"text": "hi", "name": "n" * 65}).encode(), 413),
    (b'{"text": ""}', 400), (b'{"text": "   "}', 400), (b'{"text": 5}', 400), (b"[1]", 400), (b"{", 400),
    (b"[" * 3000, 400),
])
def test_a_bad_comment_gets_a_clear_error(raw, code):
    with pytest.raises(PostError) as e:
        parse_comment(raw)
    assert e.value.code == code and str(e.value)


def test_a_reaction_is_one_of_a_small_fixed_set():
    assert [parse_reaction(json.dumps({"reaction": kind}).encode()) for kind in REACTIONS] == list(REACTIONS)
    for bad in (b'{"reaction": "rage"}', b'{"reaction": ["like"]}', b"{}", b'"like"'):
        with pytest.raises(PostError) as e:
            parse_reaction(bad)
        assert e.value.code == 400


@given(st.one_of(st.binary(max_size=600),
                 st.builds(lambda t, n: json.dumps({"text": t, "name": n}).encode(), st.text(max_size=80),
                           st.text(max_size=20))))
def test_any_body_is_a_comment_or_a_clear_error(raw):
    try:
        name, text = parse_comment(raw)
    except PostError as e:
        assert e.code in (400, 413)
    else:
        assert text and len(text) <= MAX_TEXT and all(c.isprintable() for c in name + text)


def test_the_documents_carry_the_viewers_the_pops_reported_in_the_last_seconds():
    from fbstream.live.comments import parse_batch

    track = Track()
    track.batch(200.1, [], {}, {"pop1:1": 40, "pop1:2": 35})
    track.batch(200.6, [], {}, {"pop2:7": 25})
    track.batch(201.2, [], {}, {"pop1:1": 42})
    assert json.loads(doc_of(track, 200, 201.5))["viewers"] == 100
    assert json.loads(doc_of(track, 201, 202.5))["viewers"] == 102
    track.batch(205.0, [], {}, {"pop2:7": 20})  # the others fell silent 3 s ago
    assert json.loads(doc_of(track, 205, 206.0))["viewers"] == 20
    assert "viewers" not in json.loads(doc_of(Track(), 300, 301.0))
    assert parse_batch(b'{"viewers": {"pop1:1": 3}}') == ([], {}, {"pop1:1": 3})
    for bad in (b'{"viewers": {"p": -1}}', b'{"viewers": {"p": true}}', b'{"viewers": [1]}',
                json.dumps({"viewers": {"p%d" % (i,): 1 for i in range(65)}}).encode()):
        with pytest.raises(PostError):
            parse_batch(bad)
