"""The page at /: the balancer's URL it is given, and /ping."""

from __future__ import annotations

from typing import Any

from twisted.web.test.requesthelper import DummyRequest

from fbstream.player import PageResource, PingResource


def request() -> Any:
    return DummyRequest([b""])


def test_the_page_names_the_balancer_players_reach_escaped():
    page = PageResource('http://glb.example:8088/"><script>x</script>').render_GET(request())
    assert b'<meta name="fbstream-glb" content="http://glb.example:8088/&quot;&gt;&lt;script&gt;' in page
    assert b"<script>x</script>" not in page
    assert b'<meta name="fbstream-glb" content="">' in PageResource().render_GET(request())


def test_ping_answers_nothing_to_any_origin_uncached():
    asked = request()
    assert PingResource().render(asked) == b""
    assert asked.responseCode == 204
    assert asked.responseHeaders.getRawHeaders(b"access-control-allow-origin") == [b"*"]
    assert asked.responseHeaders.getRawHeaders(b"cache-control") == [b"no-store"]
