"""
The RTMP handshake, sans-IO.

We do the plain echo handshake: C0/S0 is the version byte 3, C1/S1 is
time(4) zero(4) random(1528), C2/S2 echo the peer's C1/S1. It is enough for
ffmpeg and OBS publishers (ffmpeg only validates a digest in S1 when *playing*
and S1 bytes 4-7 are non-zero, so we send zeros there), and we accept any C1
version bytes, since ffmpeg sends 9.0.124.2 there.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

from fbstream.rtmp.errors import ProtocolError

VERSION = 3
PACKET_SIZE = 1536
_TIME = struct.Struct(">I")


def _packet(time_ms: int, random: Callable[[int], bytes]) -> bytes:
    return _TIME.pack(time_ms & 0xFFFFFFFF) + b"\x00\x00\x00\x00" + random(PACKET_SIZE - 8)


class _Handshake:
    def __init__(self) -> None:
        self._buf = bytearray()
        self._out: list[bytes] = []
        self.complete = False

    def bytes_to_send(self) -> bytes:
        data = b"".join(self._out)
        self._out = []
        return data

    def _version(self, byte: int) -> None:
        if byte != VERSION:
            raise ProtocolError(
                "unsupported RTMP version %d (only plain RTMP, version 3)" % (byte,)
            )


class ServerHandshake(_Handshake):
    """
    The server side: feed it bytes until :meth:`receive` returns the bytes that
    followed C2 (possibly empty); until then it returns ``None``.
    """

    def __init__(
        self, time_ms: int = 0, random: Callable[[int], bytes] = os.urandom
    ) -> None:
        super().__init__()
        self._time_ms = time_ms
        self._random = random
        self._sent = False

    def receive(self, data: bytes) -> bytes | None:
        if self.complete:
            return data
        buf = self._buf
        buf += data
        if not self._sent:
            if len(buf) >= 1:
                self._version(buf[0])
            if len(buf) < 1 + PACKET_SIZE:
                return None
            c1 = bytes(buf[1 : 1 + PACKET_SIZE])
            del buf[: 1 + PACKET_SIZE]
            self._out.append(bytes((VERSION,)) + _packet(self._time_ms, self._random) + c1)
            self._sent = True
        if len(buf) < PACKET_SIZE:
            return None
        rest = bytes(buf[PACKET_SIZE:])
        self._buf = bytearray()
        self.complete = True
        return rest


class ClientHandshake(_Handshake):
    """
    The client side: C0+C1 are ready to send at once; feed S0+S1+S2 and it
    returns the bytes after them once complete (and queues C2).
    """

    def __init__(
        self, time_ms: int = 0, random: Callable[[int], bytes] = os.urandom
    ) -> None:
        super().__init__()
        self._out.append(bytes((VERSION,)) + _packet(time_ms, random))

    def receive(self, data: bytes) -> bytes | None:
        if self.complete:
            return data
        buf = self._buf
        buf += data
        if len(buf) >= 1:
            self._version(buf[0])
        if len(buf) < 1 + 2 * PACKET_SIZE:
            return None
        s1 = bytes(buf[1 : 1 + PACKET_SIZE])
        rest = bytes(buf[1 + 2 * PACKET_SIZE :])
        self._buf = bytearray()
        self._out.append(s1)
        self.complete = True
        return rest
