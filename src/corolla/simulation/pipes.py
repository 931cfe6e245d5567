"""What the process backend's parent and its workers agree on: frames, array layouts, shared blocks.

* **Frames.** Everything sent over a pipe is a pickled tuple behind an 8-byte length
  (`frame`; `parse_frames` takes the complete ones off a read buffer). Parent to worker:
  ``("t", [task, ...])`` and ``("stop",)``, a task being ``(seq, kind, metadata, metrics,
  config, aref, state, index)``. Worker to parent: ``("ready", pid)``, ``("fail", text)``,
  ``("flushed",)`` (the answer to `FLUSH_SIGNAL`) and a reply ``("r", seq, kind, metadata,
  metrics, config, error, rref, state, seconds)``.
* **Arrays** never travel in a frame unless small: `array_layout` places them at 64-byte
  alignment (name, dtype, shape, offset), `write_arrays` copies them into shared memory and
  `array_views` makes numpy views of them there. A frame carries only a reference: ``None``
  (no arrays), ``("i", [(name, array), ...])`` (pickled with the frame: `inline_ref`), a
  broadcast ``("s", segment, size, layout)`` or a reply ``("a", ring, size, offset, end, total,
  layout)`` (size 0: the ring was announced before).
* **Reply rings** start with a `RING_HEADER` whose first 8 bytes say how far the parent has
  consumed (`ring_consumed`): the worker writes regions after it, the parent frees them.
* **The control block** (`control_block`, anonymous shared memory made before the fork) has
  one `SLOT` per worker: which task it is running (1 + seq, 0: none), since when (monotonic
  clock) and the index below which dispatched tasks are to be skipped (`slot_views`).
"""

from __future__ import annotations

import mmap
import pickle
import signal
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..records import ALLOWED_DTYPES, Arrays

ALIGN = 64
#: bytes at the start of a worker's ring: [0:8] how far the parent has consumed (uint64)
RING_HEADER = 64
#: bytes per worker slot in the control block: [0:8] 1 + the task it is running (0: none),
#: [8:16] when it started it (monotonic clock), [16:24] skip tasks dispatched to it before this
SLOT = 64
#: how much one read from a pipe takes at most
READ_SIZE = 1 << 20
#: the signal that asks a worker to send the replies it holds now
FLUSH_SIGNAL = signal.SIGUSR1
_HDR = 8

_ALLOWED = {np.dtype(d): d for d in ALLOWED_DTYPES}

Layout = Sequence[tuple[str, str, tuple[int, ...], int]]


# -- frames -----------------------------------------------------------------------------------
def frame(obj: Any) -> bytes:
    payload = pickle.dumps(obj, protocol=5)
    return len(payload).to_bytes(_HDR, "little") + payload


def parse_frames(buf: bytearray) -> list[Any]:
    """Take every complete frame off the front of `buf`."""
    out = []
    pos, end = 0, len(buf)
    mv = memoryview(buf)
    try:
        while end - pos >= _HDR:
            n = int.from_bytes(mv[pos : pos + _HDR], "little")
            if end - pos - _HDR < n:
                break
            out.append(pickle.loads(mv[pos + _HDR : pos + _HDR + n]))
            pos += _HDR + n
    finally:
        mv.release()
    if pos:
        del buf[:pos]
    return out


# -- arrays -----------------------------------------------------------------------------------
def _fast_arrays_ok() -> bool:
    try:
        a = Arrays.__new__(Arrays)
        a._d = {"x": np.zeros(1)}  # type: ignore[attr-defined]
        return len(a) == 1 and list(a) == ["x"] and a["x"].shape == (1,)
    except Exception:  # noqa: BLE001
        return False


_FAST_ARRAYS = _fast_arrays_ok()


def new_arrays(d: dict[str, np.ndarray]) -> Arrays:
    """Arrays around a dict of already-checked numpy arrays (no per-item validation)."""
    if _FAST_ARRAYS:
        a = Arrays.__new__(Arrays)
        a._d = d  # type: ignore[attr-defined]
        return a
    return Arrays(d)


def align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def array_layout(arrays: Any) -> tuple[list[tuple[str, str, tuple[int, ...], int]], list[np.ndarray], int]:
    """(name, dtype, shape, offset) per array, 64-byte aligned, the arrays, and the total size."""
    layout, values, off = [], [], 0
    allowed = _ALLOWED
    for k, a in arrays.items():
        if type(a) is not np.ndarray:
            a = np.asarray(a)
        dt = allowed.get(a.dtype)
        if dt is None:
            raise TypeError(f"array {k!r} has dtype {a.dtype} which cannot be sent; convert it (e.g. to float32)")
        off = align(off)
        layout.append((k, dt, a.shape, off))
        values.append(a)
        off += a.nbytes
    return layout, values, off


def write_arrays(mm: Any, base: int, layout: Layout, values: Sequence[np.ndarray]) -> None:
    """Copy `values` into `mm` at `base` + their offsets in `layout`."""
    for (_, dt, shape, off), a in zip(layout, values):
        nb = a.nbytes
        if not nb:
            continue
        start = base + off
        if a.flags.c_contiguous:
            mm[start : start + nb] = a  # one memcpy
        else:
            dst = np.ndarray(shape, dt, buffer=mm, offset=start)
            np.copyto(dst, a, casting="no")
            del dst


def array_views(buf: Any, layout: Layout, base: int = 0) -> dict[str, np.ndarray]:
    """Numpy views of the arrays `layout` places in `buf` at `base`."""
    return {k: np.ndarray(shape, dt, buffer=buf, offset=base + off) for k, dt, shape, off in layout}


def inline_ref(layout: Layout, values: Sequence[np.ndarray]) -> tuple[str, list[tuple[str, np.ndarray]]]:
    """The reference that carries the arrays themselves (pickled with the frame)."""
    return ("i", [(entry[0], v) for entry, v in zip(layout, values)])


def ring_consumed(mm: Any) -> np.ndarray:
    """The header of a reply ring: how many bytes of it the parent has consumed (one uint64)."""
    return np.ndarray((1,), np.uint64, buffer=mm, offset=0)


# -- the control block ------------------------------------------------------------------------
def control_block(workers: int) -> mmap.mmap:
    """Anonymous shared memory with one `SLOT` per worker (inherited through the fork)."""
    return mmap.mmap(-1, SLOT * workers)


def slot_views(ctl: Any, first: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(running, started, cancel) of slots ``first .. first + count - 1``, one element per slot."""
    base = first * SLOT
    return (
        np.ndarray((count,), np.int64, buffer=ctl, offset=base, strides=(SLOT,)),
        np.ndarray((count,), np.float64, buffer=ctl, offset=base + 8, strides=(SLOT,)),
        np.ndarray((count,), np.int64, buffer=ctl, offset=base + 16, strides=(SLOT,)),
    )
