"""
fbstream: a live-video platform in the shape of Facebook Live, built on Twisted.

One package, one binary (``twistd fbstream --role=...``): RTMP(S) ingest,
real-time ABR transcoding, DASH/HLS packaging and coalescing caches.

The subpackages are layers, and each imports only the ones below it
(``lint-imports`` holds them to it, with the contracts in ``setup.cfg``)::

    tap                     the twistd plugin's options: which roles to build
    roles, demo             each role's services, built from its configuration
                            (roles.build: the builder of each role)
    relay | encoder | cache the roles' engines; none imports another
    push                    the HTTP/2 push channel between the cache tiers:
                            a sans-IO core on h2, its Twisted protocols
    live                    the live streams of a process: the hub, ingest,
                            RTMP's Twisted protocols, the live API, the clock
    rtmp | registry         the sans-IO RTMP codec; where videos are recorded

Beside them, leaves that any layer may import and that import no layer
(only one another):
``media`` (a stream's messages and the interfaces of what publishes, plays
and consumes them), ``reactors`` (the reactor capabilities parts need
together), ``config``, ``metrics``, ``ratelimit``, ``limits``, ``diskio``,
``httpbody`` (a growing body streamed to HTTP viewers, for the encoder and
the caches alike) and ``player``. The transcoder's thread side
(``encoder.transcode``, ``fmp4``, ``ladder``) imports neither Twisted nor
Prometheus.
"""

__version__ = "0.1.0"
