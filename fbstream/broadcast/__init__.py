"""
``fbstream-broadcast``: a broadcaster that captures (a file, a camera, a test
pattern), encodes with PyAV, publishes over RTMP(S) with its upload bitrate
fitted to the link it has, reconnects by itself, and shows the viewers'
comments and reactions as they come.
"""
