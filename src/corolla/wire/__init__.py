"""The corolla wire format: messages as protobuf frames plus raw array chunks."""

from . import corolla_pb2 as pb
from .codec import (
    DEFAULT_CHUNK,
    WIRE_VERSION,
    ArrayAssembler,
    FrameReader,
    Limits,
    WireError,
    decode_all,
    encode,
    frame_bytes,
    from_entries,
    from_metrics,
    header_of,
    message_of,
    payload_chunks,
    to_entries,
    to_metrics,
    validate_header,
)

__all__ = [
    "DEFAULT_CHUNK",
    "WIRE_VERSION",
    "ArrayAssembler",
    "FrameReader",
    "Limits",
    "WireError",
    "decode_all",
    "encode",
    "frame_bytes",
    "from_entries",
    "from_metrics",
    "header_of",
    "message_of",
    "payload_chunks",
    "pb",
    "to_entries",
    "to_metrics",
    "validate_header",
]
