"""The push channel's Prometheus metrics, labelled by tier (a few fixed values)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SUBSCRIBERS = Gauge("fbstream_push_subscribers", "Subscribers connected to this tier's push channel", ["tier"])
SUBSCRIPTIONS = Gauge("fbstream_push_subscriptions", "Streams subscribed on this tier's push channel", ["tier"])
SENT = Counter("fbstream_push_sent", "Pushes promised to subscribers", ["tier"])
REFUSED = Counter("fbstream_push_refused", "Pushes the subscriber refused or cancelled (RST_STREAM)", ["tier"])
DROPPED = Counter("fbstream_push_dropped",
                  "Pushes given up: no room for them, or no progress within the stall bound", ["tier"])
RECEIVED = Counter("fbstream_push_received", "Pushed answers taken into this tier's cache", ["tier"])
LAG = Histogram("fbstream_push_lag_seconds",
                "From the encoder making an object's version to this tier holding it, pushed: whole, or a segment "
                "still growing from its first chunk (when each is first served here)",
                ["tier"], buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0))
FALLBACK_SECONDS = Counter("fbstream_push_fallback_seconds",
                           "Seconds streams were wanted while the push channel was down (fetched instead)",
                           ["tier"])
