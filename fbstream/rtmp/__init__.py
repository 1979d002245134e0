"""
The RTMP engine: sans-IO protocol cores (handshake, chunk stream, AMF0, FLV tag
headers, server and client connections) and the thin Twisted protocols around them.
"""
