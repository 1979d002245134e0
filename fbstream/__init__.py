"""
fbstream: a live-video platform in the shape of Facebook Live, built on Twisted.

One package, one binary (``twistd fbstream --role=...``): RTMP(S) ingest,
real-time ABR transcoding, DASH/HLS packaging and coalescing caches.
"""

__version__ = "0.1.0"
