from twisted.application.service import ServiceMaker

fbstream = ServiceMaker(
    "fbstream", "fbstream.tap", "fbstream live video: RTMP ingest, ABR transcoding, DASH/HLS, caches", "fbstream"
)
