"""
RTMP message types, protocol control and user control messages, and the
payloads of command messages.
"""

from __future__ import annotations

import struct
from typing import Any

from fbstream.rtmp import amf0
from fbstream.rtmp.errors import ProtocolError

# Message type ids.
SET_CHUNK_SIZE = 1
ABORT = 2
ACKNOWLEDGEMENT = 3
USER_CONTROL = 4
WINDOW_ACK_SIZE = 5
SET_PEER_BANDWIDTH = 6
AUDIO = 8
VIDEO = 9
DATA_AMF3 = 15
SHARED_OBJECT_AMF3 = 16
COMMAND_AMF3 = 17
DATA_AMF0 = 18
SHARED_OBJECT_AMF0 = 19
COMMAND_AMF0 = 20
AGGREGATE = 22

# User control event types.
UC_STREAM_BEGIN = 0
UC_STREAM_EOF = 1
UC_STREAM_DRY = 2
UC_SET_BUFFER_LENGTH = 3
UC_STREAM_IS_RECORDED = 4
UC_PING_REQUEST = 6
UC_PING_RESPONSE = 7

# Set Peer Bandwidth limit types.
BANDWIDTH_HARD = 0
BANDWIDTH_SOFT = 1
BANDWIDTH_DYNAMIC = 2

# The chunk stream ids we send on.
CSID_CONTROL = 2
CSID_COMMAND = 3
CSID_STATUS = 5
CSID_AUDIO = 6
CSID_VIDEO = 7
CSID_DATA = 8

_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_UC = struct.Struct(">HI")


def u32(value: int) -> bytes:
    return _U32.pack(value & 0xFFFFFFFF)


def set_peer_bandwidth(size: int, limit: int = BANDWIDTH_DYNAMIC) -> bytes:
    return _U32.pack(size) + bytes((limit,))


def user_control(event: int, value: int) -> bytes:
    return _UC.pack(event, value & 0xFFFFFFFF)


def parse_user_control(payload: bytes) -> tuple[int, int]:
    """The event type and first 4-byte value of a User Control message."""
    if len(payload) < 6:
        raise ProtocolError("User Control message of %d bytes is too short" % (len(payload),))
    event, value = _UC.unpack_from(payload)
    return int(event), int(value)


def command(name: str, transaction_id: float, *args: Any) -> bytes:
    """The AMF0 payload of a command message."""
    return amf0.encode(name, float(transaction_id), *args)


def status_info(level: str, code: str, description: str, **extra: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"level": level, "code": code, "description": description}
    info.update(extra)
    return info


def parse_command(payload: bytes, type_id: int) -> tuple[str, float, list[Any]]:
    """
    Split a command message into its name, transaction id and arguments.

    An AMF3 command (type 17) whose body is AMF0 behind a zero format byte is
    read like an AMF0 one; a real AMF3 value in it is refused by the decoder.
    """
    if type_id == COMMAND_AMF3:
        if not payload or payload[0] != 0:
            raise ProtocolError("AMF3-encoded commands are not supported")
        payload = payload[1:]
    values = amf0.decode_all(payload)
    if len(values) < 2 or not isinstance(values[0], str):
        raise ProtocolError("malformed command message")
    tid = values[1]
    if not isinstance(tid, float):
        raise ProtocolError("command %r has no transaction id" % (values[0],))
    return values[0], tid, values[2:]
