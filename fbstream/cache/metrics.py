"""Per-tier cache metrics."""

from prometheus_client import Counter, Gauge

REQUESTS = Counter("fbstream_cache_requests", "Requests received", ["tier"])
HITS = Counter("fbstream_cache_hits", "Requests served from the store", ["tier"])
MISSES = Counter("fbstream_cache_misses", "Requests that started an upstream fetch", ["tier"])
COALESCED = Counter("fbstream_cache_coalesced_waiters", "Requests that waited on another's fetch", ["tier"])
UPSTREAM_FETCHES = Counter("fbstream_cache_upstream_fetches", "Requests sent upstream", ["tier"])
# Of those, the manifests and playlists: asked again as they change (and each
# time by a PoP's proxy layers, see engine.UNCACHED_DOWNSTREAM), so their
# share says nothing of how well the segments coalesce.
MANIFEST_REQUESTS = Counter("fbstream_cache_manifest_requests", "Requests received for manifests and playlists", ["tier"])
MANIFEST_FETCHES = Counter("fbstream_cache_manifest_fetches", "Manifests and playlists fetched upstream", ["tier"])
UPSTREAM_ERRORS = Counter("fbstream_cache_upstream_errors", "Upstream fetches that failed or timed out", ["tier"])
UPSTREAM_CANCELLED = Counter("fbstream_cache_upstream_cancelled", "Upstream fetches cancelled when every waiter left", ["tier"])
LOCK_TIMEOUTS = Counter("fbstream_cache_lock_timeouts", "Cache-blocking timeouts (one more upstream try each)", ["tier"])
BYTES_SERVED = Counter("fbstream_cache_bytes_served", "Body bytes sent to clients", ["tier"])
BYTES_UPSTREAM = Counter("fbstream_cache_bytes_upstream", "Body bytes received from upstream", ["tier"])
EVICTIONS = Counter("fbstream_cache_evictions", "Objects evicted to stay within the byte bound", ["tier"])
STORED_BYTES = Gauge("fbstream_cache_stored_bytes", "Bytes held in the store", ["tier"])
DROPPED_VIEWERS = Counter("fbstream_cache_dropped_viewers", "Viewers dropped for not reading", ["tier"])
PAST_THE_EDGE = Counter("fbstream_cache_past_the_edge",
                        "Requests for segments well past the live edge, answered 404 here", ["tier"])
