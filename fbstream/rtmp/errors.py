"""
Errors raised by the sans-IO RTMP cores.

Every one of them means "this connection is broken or hostile": the Twisted
plumbing logs the reason and closes that one connection, nothing else.
"""


class RTMPError(Exception):
    """Base class of everything the RTMP cores raise."""


class ProtocolError(RTMPError):
    """The peer sent bytes that violate RTMP, or exceed one of our limits."""


class AMFError(ProtocolError):
    """An AMF0 value could not be decoded (truncated, unknown marker, too deep)."""


class UnsupportedCodec(RTMPError):
    """A media tag carries a codec this server does not accept."""
