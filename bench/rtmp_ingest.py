"""
RTMP ingest parsing speed: MB/s of RTMP media parsed into complete messages on
one core, at 128-byte and 4096-byte chunks, by fbstream's chunk decoder, by the
whole server connection (decoder, control handling, command and media events),
and by the pure-Python ``pyrtmp`` package on the same byte stream.

    pip install '.[bench]' && python bench/rtmp_ingest.py
    python bench/rtmp_ingest.py --smoke    (CI: the same table from 2 s of media, best of 3)

The stream is what a publisher sends after the handshake: a 6 Mbps, 30 fps
H.264 video track (a 2 s GOP: big keyframes, smaller inter frames) with a
128 kbps AAC track, chunked the way ffmpeg chunks it. It is fed in 64 KiB
reads, which is what a Twisted transport hands ``dataReceived`` under load,
and (one row) in 1460-byte reads, one TCP segment at a time.

The exit status is non-zero only if the bench itself broke (pyrtmp is not
installed, or one of fbstream's parsers did not give back every message it
was fed), never on a figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fbstream.rtmp import amf0
from fbstream.rtmp import messages as m
from fbstream.rtmp.chunk import ChunkDecoder, ChunkEncoder
from fbstream.rtmp.connection import ServerConnection
from fbstream.rtmp.handshake import ClientHandshake

READ_SIZE = 65536


def media_messages(seconds: float, seed: int = 1) -> list[tuple[int, int, int, bytes]]:
    """(csid, timestamp, type, payload) of ``seconds`` of 6 Mbps video + AAC."""
    rnd = random.Random(seed)
    out = []
    video_bps = 6_000_000
    fps = 30
    gop = 60
    per_frame = video_bps / 8 / fps
    key_size = int(per_frame * 8)
    inter_size = int((per_frame * gop - key_size) / (gop - 1))
    audio_t = 0.0
    for frame in range(int(seconds * fps)):
        ts = frame * 1000 // fps
        size = key_size if frame % gop == 0 else int(inter_size * rnd.uniform(0.7, 1.3))
        head = b"\x17\x01" if frame % gop == 0 else b"\x27\x01"
        out.append((6, ts, m.VIDEO, head + b"\x00\x00\x00" + rnd.randbytes(size)))
        while audio_t <= ts:
            out.append((4, int(audio_t), m.AUDIO, b"\xaf\x01" + rnd.randbytes(380)))
            audio_t += 1024 / 48
    return out


def chunked(messages: list[tuple[int, int, int, bytes]], chunk_size: int, announce: bool) -> bytes:
    enc = ChunkEncoder()
    parts = [enc.set_chunk_size(chunk_size)] if announce else []
    if not announce:
        enc.chunk_size = chunk_size
    for csid, ts, type_id, payload in messages:
        parts.append(enc.encode(csid, ts, type_id, 1, payload))
    return b"".join(parts)


def reads(data: bytes) -> list[bytes]:
    return [data[i : i + READ_SIZE] for i in range(0, len(data), READ_SIZE)]


def best_of(runs: int, fn) -> tuple[float, int]:
    best = float("inf")
    count = 0
    for _ in range(runs):
        start = time.perf_counter()
        count = fn()
        best = min(best, time.perf_counter() - start)
    return best, count


def bench_decoder(pieces: list[bytes]) -> int:
    decoder = ChunkDecoder()
    n = 0
    for piece in pieces:
        n += len(decoder.feed(piece))
    return n


def connection_prologue() -> tuple[ServerConnection, bytes]:
    """A server connection that has accepted a publish, and its encoder's peer."""
    server = ServerConnection()
    hs = ClientHandshake()
    server.receive(hs.bytes_to_send())
    hs.receive(server.bytes_to_send())
    enc = ChunkEncoder()
    (req,) = server.receive(hs.bytes_to_send() + enc.encode(
        3, 0, m.COMMAND_AMF0, 0, m.command("connect", 1, {"app": "live", "tcUrl": "rtmp://h/live"})))
    server.accept_connect(req)
    server.receive(enc.encode(3, 0, m.COMMAND_AMF0, 0, m.command("createStream", 2, None)))
    (preq,) = server.receive(enc.encode(8, 0, m.COMMAND_AMF0, 1, amf0.encode("publish", 0.0, None, "cam", "live")))
    server.accept_publish(preq)
    server.bytes_to_send()
    return server, b""


def bench_connection(pieces: list[bytes]) -> int:
    server, _ = connection_prologue()
    n = 0
    for piece in pieces:
        n += len(server.receive(piece))
    return n


def bench_pyrtmp(data: bytes, chunk_size: int) -> int:
    from pyrtmp import StreamClosedException
    from pyrtmp.session_manager import SessionManager

    async def parse() -> int:
        reader = asyncio.StreamReader(limit=len(data) + 1)
        reader.feed_data(data)
        reader.feed_eof()
        session = SessionManager(reader, None, reader_chunk_size=chunk_size)
        n = 0
        try:
            async for _ in session.read_chunks_from_stream():
                n += 1
        except StreamClosedException:
            pass
        return n

    return asyncio.run(parse())


def check(name: str, parsed: int, expected: int) -> None:
    """A parser of ours that loses messages breaks the bench, whatever its speed."""
    if parsed < expected:
        raise SystemExit("the bench broke: %s gave %d messages of %d" % (name, parsed, expected))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="media seconds for fbstream")
    parser.add_argument("--pyrtmp-seconds", type=float, default=1.0, help="media seconds for pyrtmp (it is slow)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="2 s of media, 0.5 s for pyrtmp, best of 3 (for CI)")
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.pyrtmp_seconds, args.runs = 2.0, 0.5, 3
    try:
        import pyrtmp  # noqa: F401
    except ImportError:
        raise SystemExit("the bench broke: pyrtmp is not installed (pip install '.[bench]')") from None

    messages = media_messages(args.seconds)
    small = media_messages(args.pyrtmp_seconds, seed=2)
    print("RTMP ingest parsing, one core, %d KiB reads; %d s of 6 Mbps H.264 + AAC"
          % (READ_SIZE // 1024, args.seconds))
    print("%-8s %-34s %12s %10s %10s" % ("chunk", "parser", "MB parsed", "MB/s", "msgs"))
    for chunk_size in (128, 4096):
        data = chunked(messages, chunk_size, announce=True)
        pieces = reads(data)
        mb = len(data) / 1e6
        t, n = best_of(args.runs, lambda pieces=pieces: bench_decoder(pieces))
        check("ChunkDecoder", n, len(messages) + 1)  # + the Set Chunk Size message
        ours = mb / t
        print("%-8d %-34s %12.1f %10.1f %10d" % (chunk_size, "fbstream ChunkDecoder", mb, ours, n))
        mss = [data[i : i + 1460] for i in range(0, len(data), 1460)]
        t, n = best_of(args.runs, lambda mss=mss: bench_decoder(mss))
        check("ChunkDecoder, 1460 B reads", n, len(messages) + 1)
        print("%-8d %-34s %12.1f %10.1f %10d" % (chunk_size, "fbstream ChunkDecoder, 1460 B reads", mb, mb / t, n))
        t, n = best_of(args.runs, lambda pieces=pieces: bench_connection(pieces))
        check("ServerConnection", n, len(messages))
        print("%-8d %-34s %12.1f %10.1f %10d" % (chunk_size, "fbstream ServerConnection (events)", mb, mb / t, n))
        pdata = chunked(small, chunk_size, announce=False)
        expected = len(small)
        t, n = best_of(1, lambda pdata=pdata, chunk_size=chunk_size: bench_pyrtmp(pdata, chunk_size))
        if n == 0:
            raise SystemExit("the bench broke: pyrtmp parsed no message (is it still 0.3.1?)")
        theirs = len(pdata) / 1e6 / t
        status = "" if n == expected else "  (pyrtmp parsed %d of %d messages)" % (n, expected)
        print("%-8d %-34s %12.1f %10.2f %10d%s" % (chunk_size, "pyrtmp 0.3.1", len(pdata) / 1e6, theirs, n, status))
        print("%-8d %-34s %12s %9.0fx" % (chunk_size, "ratio fbstream / pyrtmp", "", ours / theirs))


if __name__ == "__main__":
    main()
