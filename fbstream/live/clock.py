"""
The server's wall clock as DASH players read it: ISO 8601 times for the
manifests, and ``/time`` (the MPD's ``UTCTiming``), which the encoder and
every cache tier serve so a player syncs its clock wherever it lands.
"""

from __future__ import annotations

import datetime

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import Request


def iso_time(seconds: float) -> str:
    """``2026-11-21T05:00:00.123Z``: what DASH and our ``/time`` use."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (moment.microsecond // 1000)


class TimeResource(Resource):
    """``/time``: now, by ``clock``, never cached."""

    isLeaf = True

    def __init__(self, clock: IReactorTime) -> None:
        super().__init__()
        self.clock = clock

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"access-control-allow-origin", b"*")
        return iso_time(self.clock.seconds()).encode()
