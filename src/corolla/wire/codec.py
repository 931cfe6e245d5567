"""Messages <-> the bytes on a corolla stream (framing: see proto/corolla/v1/corolla.proto).

A message travels as one *unit*: a `Frame` with a `Header`, the arrays' raw bytes as chunks,
then a `Frame` with an `End`. Array bytes never pass through protobuf, so a model costs one
copy out of the sender's arrays and one copy into the receiver's preallocated arrays.

Everything a peer sends is checked against `Limits` before memory is allocated for it, and
every protocol violation is a `WireError` whose `code` says which kind:

- ``bad-frame``  unparsable frame, frame without body, malformed header field, empty chunk
- ``too-large``  a `Limits` bound is exceeded (frame, chunk, payload, number of arrays),
                 or more payload bytes arrive than declared
- ``bad-dtype``  a dtype outside `ALLOWED_DTYPES`
- ``bad-shape``  too many dims, nbytes != prod(shape) * itemsize, payload_bytes != sum(nbytes)
- ``unexpected`` something out of order (End with no unit open, End for another message,
                 anything but an End where one is due) or an unsupported codec
- ``truncated``  the stream ended inside a unit
- ``version``    the peer speaks another `WIRE_VERSION` (checked by the handshake, not here)
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import buffers
from ..message import Content, Error, Message, Metadata
from ..records import ALLOWED_DTYPES, Arrays, check_metrics
from . import corolla_pb2 as pb

WIRE_VERSION = 1
DEFAULT_CHUNK = 1 << 20

_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1


class WireError(ValueError):
    """A peer sent bytes that break the protocol; `code` says how."""

    def __init__(self, code: str, text: str):
        super().__init__(f"{code}: {text}")
        self.code = code
        self.text = text


@dataclass(frozen=True)
class Limits:
    """Bounds on what a peer may make us parse or allocate."""

    max_chunk: int = 4 << 20  # largest raw chunk accepted
    max_frame: int = 4 << 20  # largest serialized Frame accepted
    max_payload: int = 1 << 40  # largest total payload a header may declare
    max_arrays: int = 100_000
    max_ndim: int = 32


# -- values <-> protobuf ------------------------------------------------------------------------


def _to_value(key: str, v: Any) -> pb.Value:
    # bool before int: bool is an int subclass and must stay a bool on the other side
    if isinstance(v, (bool, np.bool_)):
        return pb.Value(b=bool(v))
    if isinstance(v, (int, np.integer)):
        v = int(v)
        if not _I64_MIN <= v <= _I64_MAX:
            raise ValueError(f"{key!r}: int {v} does not fit in 64 bits")
        return pb.Value(i=v)
    if isinstance(v, (float, np.floating)):
        return pb.Value(f=float(v))
    if isinstance(v, str):
        return pb.Value(s=str(v))
    if isinstance(v, (list, tuple)):
        items = [_to_value(f"{key}[{n}]", x) for n, x in enumerate(v)]
        return pb.Value(list=pb.ValueList(items=items))
    raise TypeError(f"{key!r}: cannot send a {type(v).__name__} (use int, float, str, bool or a list of them)")


def _from_value(key: str, v: pb.Value) -> Any:
    kind = v.WhichOneof("kind")
    if kind is None:
        raise WireError("bad-frame", f"value of {key!r} is empty")
    if kind == "list":
        return [_from_value(key, x) for x in v.list.items]
    return getattr(v, kind)


def to_entries(values: Mapping[str, Any]) -> list[pb.Entry]:
    """Config or properties as protobuf entries; types survive (int stays int, bool stays bool)."""
    out = []
    for k, v in values.items():
        if not isinstance(k, str):
            raise TypeError(f"keys must be str, got {k!r}")
        out.append(pb.Entry(key=k, value=_to_value(k, v)))
    return out


def from_entries(entries: Iterable[pb.Entry]) -> dict[str, Any]:
    """The inverse of `to_entries`; tuples come back as lists."""
    return {e.key: _from_value(e.key, e.value) for e in entries}


def to_metrics(metrics: Mapping[str, float]) -> list[pb.Metric]:
    return [pb.Metric(key=k, value=float(v)) for k, v in check_metrics(metrics, "metrics").items()]


def from_metrics(items: Iterable[pb.Metric]) -> dict[str, float]:
    """Metrics are doubles on the wire, so they always come back as float."""
    return {m.key: m.value for m in items}


# -- encoding -----------------------------------------------------------------------------------


def header_of(
    msg: Message,
    *,
    dsts: Sequence[int] = (),
    dst_message_ids: Sequence[str] = (),
    run_config: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> pb.Header:
    """Everything about `msg` except its array bytes, which follow as chunks."""
    if len(dsts) != len(dst_message_ids):
        raise ValueError(f"{len(dsts)} dsts but {len(dst_message_ids)} dst_message_ids")
    md = msg.metadata
    specs = []
    for name, value in msg.content.arrays.items():
        a = np.asarray(value)
        if a.dtype.str not in ALLOWED_DTYPES:
            raise TypeError(f"array {name!r} has dtype {a.dtype}, which cannot be sent")
        specs.append(pb.ArraySpec(name=name, dtype=a.dtype.str, shape=a.shape, nbytes=a.nbytes))
    h = pb.Header(
        kind=msg.kind,
        run_id=md.run_id,
        round=md.round,
        src=md.src,
        dst=md.dst,
        message_id=md.message_id,
        reply_to=md.reply_to,
        deadline=md.deadline,
        created=md.created,
        config=to_entries(msg.content.config),
        metrics=to_metrics(msg.content.metrics),
        arrays=specs,
        payload_bytes=sum(s.nbytes for s in specs),
        dsts=dsts,
        dst_message_ids=dst_message_ids,
        run_config=to_entries(run_config or {}),
        seed=seed,
    )
    if msg.error is not None:
        h.error.SetInParent()  # presence marks an error reply, even with empty code and text
        h.error.code = msg.error.code
        h.error.text = msg.error.text
    return h


def frame_bytes(**body: Any) -> bytes:
    """A serialized `Frame`, e.g. ``frame_bytes(heartbeat=pb.Heartbeat(sent=t))``."""
    return pb.Frame(**body).SerializeToString()


def _byte_view(a: np.ndarray) -> memoryview:
    """A flat unsigned-byte view of a C-contiguous array (works for any dtype, incl. 0-d)."""
    return memoryview(a.reshape(-1).view(np.uint8))


def payload_chunks(arrays: Arrays, chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
    """The arrays' bytes back to back, cut into `chunk_size` pieces (the last may be shorter).

    Only one chunk is held at a time; a non-contiguous array is made contiguous first (a copy
    of that array only).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    pieces: list[memoryview] = []
    held = 0
    for value in arrays.values():
        a = np.ascontiguousarray(value)
        if a.nbytes == 0:
            continue
        view = _byte_view(a)
        pos = 0
        while pos < len(view):
            take = min(chunk_size - held, len(view) - pos)
            pieces.append(view[pos : pos + take])
            held += take
            pos += take
            if held == chunk_size:
                yield bytes(pieces[0]) if len(pieces) == 1 else b"".join(pieces)
                pieces, held = [], 0
    if pieces:
        yield bytes(pieces[0]) if len(pieces) == 1 else b"".join(pieces)


def encode(msg: Message, chunk_size: int = DEFAULT_CHUNK, **header_kw: Any) -> Iterator[bytes]:
    """One whole unit: header frame, payload chunks, end frame."""
    yield frame_bytes(header=header_of(msg, **header_kw))
    yield from payload_chunks(msg.content.arrays, chunk_size)
    yield frame_bytes(end=pb.End(message_id=msg.metadata.message_id, ok=True))


# -- decoding -----------------------------------------------------------------------------------


def validate_header(h: pb.Header, limits: Limits) -> None:
    """Check a peer's header before anything is allocated for it (sizes computed exactly)."""
    if len(h.arrays) > limits.max_arrays:
        raise WireError("too-large", f"{len(h.arrays)} arrays (limit {limits.max_arrays})")
    if h.payload_bytes > limits.max_payload:
        raise WireError("too-large", f"payload of {h.payload_bytes} bytes (limit {limits.max_payload})")
    if len(h.dsts) != len(h.dst_message_ids):
        raise WireError("bad-frame", f"{len(h.dsts)} dsts but {len(h.dst_message_ids)} dst_message_ids")
    names: set[str] = set()
    total = 0
    for spec in h.arrays:
        if not spec.name:
            raise WireError("bad-frame", "array with an empty name")
        if spec.name in names:
            raise WireError("bad-frame", f"array name {spec.name!r} appears twice")
        names.add(spec.name)
        if spec.codec:
            raise WireError("unexpected", f"codec {spec.codec!r} not supported")
        if spec.dtype not in ALLOWED_DTYPES:
            raise WireError("bad-dtype", f"array {spec.name!r} has dtype {spec.dtype!r}, which is not allowed")
        if len(spec.shape) > limits.max_ndim:
            raise WireError("bad-shape", f"array {spec.name!r} has {len(spec.shape)} dims (limit {limits.max_ndim})")
        itemsize = np.dtype(spec.dtype).itemsize
        # numpy must be able to index even an empty array's shape, e.g. (0, 2**63) is refused by np.empty
        if math.prod(d for d in spec.shape if d) * itemsize > min(limits.max_payload, sys.maxsize):
            raise WireError("bad-shape", f"array {spec.name!r} has an impossible shape {list(spec.shape)}")
        expected = math.prod(spec.shape) * itemsize  # Python ints: no overflow
        if spec.nbytes != expected:
            raise WireError("bad-shape", f"array {spec.name!r}: nbytes {spec.nbytes} but shape needs {expected}")
        total += expected
    if total != h.payload_bytes:
        raise WireError("bad-shape", f"payload_bytes {h.payload_bytes} but the arrays need {total}")


class FrameReader:
    """Splits one stream's raw messages into frames and payload chunks; validates before anything is allocated.

    While payload bytes are due every message is a chunk (raw bytes can't be told apart from a
    frame); once they are in, only the unit's End may follow.
    """

    def __init__(self, limits: Limits = Limits()):
        self.limits = limits
        self._open: str | None = None  # message_id of the unit in progress
        self._remaining = 0

    @property
    def in_payload(self) -> bool:
        return self._remaining > 0

    @property
    def remaining(self) -> int:
        return self._remaining

    def _parse(self, data: bytes) -> tuple[pb.Frame, str]:
        if len(data) > self.limits.max_frame:
            raise WireError("too-large", f"frame of {len(data)} bytes (limit {self.limits.max_frame})")
        try:
            frame = pb.Frame.FromString(data)
        except Exception as e:  # DecodeError, but the parser's exception types aren't a promise
            raise WireError("bad-frame", f"{len(data)} bytes that are not a Frame ({e})") from e
        body = frame.WhichOneof("body")
        if body is None:
            raise WireError("bad-frame", "frame without a body")
        return frame, body

    def feed(self, data: bytes) -> tuple[str, Any]:
        """Classify one stream message: ("frame"|"header", Frame), ("chunk", data) or ("end", End)."""
        if self._remaining:
            n = len(data)
            if n == 0:
                raise WireError("bad-frame", "empty payload chunk")
            if n > self.limits.max_chunk:
                raise WireError("too-large", f"chunk of {n} bytes (limit {self.limits.max_chunk})")
            if n > self._remaining:
                raise WireError("too-large", f"chunk of {n} bytes but only {self._remaining} payload bytes are due")
            self._remaining -= n
            return "chunk", data
        if self._open is not None:
            try:
                frame, body = self._parse(data)
            except WireError as e:
                raise WireError("unexpected", f"End of {self._open!r} due; got {e.text}") from e
            if body != "end":
                raise WireError("unexpected", f"End of {self._open!r} due; got a {body} frame")
            if frame.end.message_id != self._open:
                raise WireError("unexpected", f"End of {self._open!r} due; got End of {frame.end.message_id!r}")
            self._open = None
            return "end", frame.end
        frame, body = self._parse(data)
        if body == "end":
            raise WireError("unexpected", f"End of {frame.end.message_id!r} but no message is open")
        if body == "header":
            validate_header(frame.header, self.limits)
            self._open = frame.header.message_id
            self._remaining = frame.header.payload_bytes
            return "header", frame
        return "frame", frame

    def close(self) -> None:
        """At end of stream: a unit still open means the peer stopped midway."""
        if self._open is not None:
            raise WireError("truncated", f"stream ended inside {self._open!r} ({self._remaining} payload bytes due)")


class ArrayAssembler:
    """Writes a validated header's payload chunks straight into preallocated arrays."""

    def __init__(self, header: pb.Header):
        self._arrays = Arrays()
        self._targets: list[np.ndarray] = []  # flat uint8 views of the non-empty arrays, in payload order
        for spec in header.arrays:
            a = buffers.empty(tuple(spec.shape), np.dtype(spec.dtype))  # used again next round, not faulted in fresh
            self._arrays[spec.name] = a
            if a.nbytes:
                self._targets.append(a.reshape(-1).view(np.uint8))
        self._remaining = sum(len(t) for t in self._targets)
        self._index = 0  # target being filled
        self._offset = 0  # bytes of it already filled

    @property
    def complete(self) -> bool:
        return self._remaining == 0

    def write(self, chunk: bytes) -> None:
        """Copy one chunk into place (one copy per array it touches).

        The copy is `np.copyto` between uint8 views, which releases the GIL: a memoryview slice
        assignment holds it, and a workflow folding in another thread would wait on every chunk.
        """
        src = np.frombuffer(chunk, np.uint8)
        n = len(src)
        if n > self._remaining:
            raise WireError("too-large", f"chunk of {n} bytes but only {self._remaining} payload bytes are due")
        pos = 0
        while pos < n:
            target = self._targets[self._index]
            take = min(len(target) - self._offset, n - pos)
            np.copyto(target[self._offset : self._offset + take], src[pos : pos + take])
            pos += take
            self._offset += take
            if self._offset == len(target):
                self._index += 1
                self._offset = 0
        self._remaining -= n

    def arrays(self) -> Arrays:
        if not self.complete:
            raise WireError("truncated", f"{self._remaining} payload bytes missing")
        return self._arrays


def message_of(h: pb.Header, arrays: Arrays | None = None) -> Message:
    """Rebuild the Message a header (plus its assembled arrays) describes."""
    return Message(
        kind=h.kind,
        content=Content(arrays if arrays is not None else Arrays(), from_metrics(h.metrics), from_entries(h.config)),
        metadata=Metadata(
            run_id=h.run_id,
            round=h.round,
            src=h.src,
            dst=h.dst,
            message_id=h.message_id,
            reply_to=h.reply_to,
            deadline=h.deadline,
            created=h.created,
        ),
        error=Error(h.error.code, h.error.text) if h.HasField("error") else None,
    )


def decode_all(raw: Iterable[bytes], limits: Limits = Limits()) -> list[Message]:
    """Decode a whole recorded stream (tests, small tools); control frames and aborted units are skipped."""
    reader = FrameReader(limits)
    out: list[Message] = []
    header: pb.Header | None = None
    assembler: ArrayAssembler | None = None
    for data in raw:
        kind, value = reader.feed(data)
        if kind == "header":
            header = value.header
            assembler = ArrayAssembler(header)
        elif kind == "chunk":
            assembler.write(value)
        elif kind == "end":
            if value.ok:
                out.append(message_of(header, assembler.arrays()))
            header = assembler = None
    reader.close()
    return out
