"""
The encoder's Prometheus metrics (per stream and rendition). A stream's
series go when the stream ends (:func:`forget`): stream names are the
broadcasters', and the exposition must not grow with every one ever seen.
"""

from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

LIVE_VIDEOS = Gauge("fbstream_encoder_live_videos", "Streams being transcoded")
FRAMES_IN = Counter("fbstream_encoder_frames_in", "Video frames received for transcoding", ["stream"])
FRAMES_OUT = Counter(
    "fbstream_encoder_frames_out", "Video frames encoded", ["stream", "rendition"]
)
DROPPED_FRAMES = Counter(
    "fbstream_encoder_dropped_frames",
    "Video frames dropped because transcoding fell behind",
    ["stream"],
)
SHED_FRAMES = Counter(
    "fbstream_encoder_shed_frames",
    "Video frames left out (every other one) while transcoding was catching up with real time",
    ["stream"],
)
ENCODE_SECONDS = Histogram(
    "fbstream_encoder_frame_encode_seconds",
    "Time to scale and encode one frame into every rendition",
    ["stream"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.033, 0.05, 0.1, 0.2, 0.5),
)
SEGMENTS = Counter("fbstream_encoder_segments", "Segments cut", ["stream", "rendition"])
AVAILABILITY_LAG = Histogram(
    "fbstream_encoder_segment_availability_lag_seconds",
    "From receiving a segment's last frame to the segment being complete in every rendition",
    ["stream"],
    buckets=(0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0),
)
REFUSED = Counter("fbstream_encoder_refused", "Streams refused by the encoder", [])
DROPPED_VIEWERS = Counter("fbstream_encoder_dropped_viewers",
                          "Requests for a growing segment dropped for not reading", [])
ARCHIVE_LOST = Counter(
    "fbstream_encoder_archive_files_lost",
    "Archive files (segments, init segments, state) given up after retries: missing from the replay",
    [],
)

#: The series labelled by stream alone, and by stream and rendition.
_BY_STREAM = (FRAMES_IN, DROPPED_FRAMES, SHED_FRAMES, ENCODE_SECONDS, AVAILABILITY_LAG)
_BY_RENDITION = (FRAMES_OUT, SEGMENTS)


def forget(stream: str, renditions: Iterable[str]) -> None:
    """Remove every series of ``stream`` (an ended stream's)."""
    for metric in _BY_STREAM:
        metric.remove(stream)
    for name in renditions:
        for metric in _BY_RENDITION:
            metric.remove(stream, name)
