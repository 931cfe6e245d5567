"""Large array buffers that are used again, round after round, instead of fresh memory each time.

A round of a large model allocates the same few big arrays again and again: a deployment's
driver assembles every reply, sums them in float64 and writes the new model; a node assembles
the global arrays. An allocation that large is mmapped by malloc, its pages are faulted in and
zeroed by the kernel on first touch and given back on free, so every round pays for it again.
On a virtual machine that reports freed pages to its host (virtio-balloon free-page reporting,
as on our CI machines), the host must back them again as well. Measured on the 2-vCPU machine:
writing 800 MB of fresh memory took 0.09-1.3 s, writing it again 0.03 s; page zeroing was about
a quarter of all CPU time in a deployment round of a 400 MB model.

`empty(shape, dtype)` hands out an array over a block of a process-wide pool. The block goes
back to the pool when the last array viewing it is gone (a `weakref.finalize` on the array
every view of it keeps as its base), so callers never give anything back:
an array that is kept simply keeps its block. Blocks are matched by size class (the size rounded
up to 2 MiB): a program that allocates the same shapes every round finds them again. At most
`max_idle_bytes` wait in the pool (oldest dropped first), and blocks idle for longer than
`max_idle_s` are dropped at the next call or `trim()` (a node calls it with every heartbeat), and
a run's end clears the idle blocks (`clear()`), so a finished run does not hold its memory.

Arrays below `min_bytes` (16 MiB) come from plain `np.empty`: malloc already keeps those.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Sequence

import numpy as np

__all__ = ["BufferPool", "aligned_empty", "empty", "pool"]

#: size classes: a block's capacity is its request rounded up to this (a huge page)
GRANULE = 2 << 20

_pools: "weakref.WeakSet[BufferPool]" = weakref.WeakSet()  # every pool, to reset in a forked child


class BufferPool:
    def __init__(self, max_idle_bytes: int = 2 << 30, max_idle_s: float = 60.0, min_bytes: int = 16 << 20):
        self.max_idle_bytes, self.max_idle_s, self.min_bytes = max_idle_bytes, max_idle_s, min_bytes
        self._idle: list[tuple[float, int, np.ndarray]] = []  # (since, capacity, raw block), oldest first
        self._idle_bytes = 0
        self._lock = threading.RLock()  # a finalizer may run inside a locked section (gc)
        self.hits = self.misses = 0
        _pools.add(self)

    def _after_fork(self) -> None:
        """In a forked child: a fresh lock (another thread may have held it at the fork) and no
        idle blocks (they are the parent's pages, copied on the first write)."""
        self._lock = threading.RLock()
        self._idle, self._idle_bytes = [], 0

    def empty(self, shape: int | Sequence[int], dtype: np.typing.DTypeLike = np.float64, align: int = 64) -> np.ndarray:
        """Like `np.empty(shape, dtype)` (contents undefined), starting on an `align`-byte boundary."""
        dtype = np.dtype(dtype)
        shape = (int(shape),) if np.ndim(shape) == 0 else tuple(int(s) for s in shape)  # type: ignore[arg-type]
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if dtype.hasobject:
            return np.empty(shape, dtype)  # references: never raw memory
        if nbytes < self.min_bytes:
            return aligned_empty(shape, dtype, align)
        capacity = -(-(nbytes + align) // GRANULE) * GRANULE
        raw = self._take(capacity)
        if raw is None:
            raw = np.empty(capacity, np.uint8)
        off = -raw.ctypes.data % align
        # the lease: an array whose base is a memoryview, not an array, so numpy collapses the
        # base of every view of it to the lease itself; the block comes back when the last is gone
        lease = np.frombuffer(memoryview(raw)[off : off + nbytes], np.uint8)
        done = weakref.finalize(lease, self._give_back, capacity, raw)
        done.atexit = False
        return lease.view(dtype).reshape(shape)

    @property
    def idle_bytes(self) -> int:
        return self._idle_bytes

    def trim(self) -> None:
        """Drop the blocks idle for longer than `max_idle_s` (also done by every `empty`)."""
        with self._lock:
            self._expire(time.monotonic())

    def clear(self) -> None:
        """Drop every idle block (their memory goes back to the system)."""
        with self._lock:
            self._idle.clear()
            self._idle_bytes = 0

    def _take(self, capacity: int) -> np.ndarray | None:
        with self._lock:
            self._expire(time.monotonic())
            for i in range(len(self._idle) - 1, -1, -1):  # the most recently used first: warm pages
                if self._idle[i][1] == capacity:
                    _, _, raw = self._idle.pop(i)
                    self._idle_bytes -= capacity
                    self.hits += 1
                    return raw
            self.misses += 1
        return None

    def _give_back(self, capacity: int, raw: np.ndarray) -> None:
        if capacity > self.max_idle_bytes:
            return
        with self._lock:
            now = time.monotonic()
            self._idle.append((now, capacity, raw))
            self._idle_bytes += capacity
            while self._idle_bytes > self.max_idle_bytes:
                _, cap, _ = self._idle.pop(0)
                self._idle_bytes -= cap
            self._expire(now)

    def _expire(self, now: float) -> None:
        while self._idle and now - self._idle[0][0] > self.max_idle_s:
            _, cap, _ = self._idle.pop(0)
            self._idle_bytes -= cap


def aligned_empty(shape: int | Sequence[int], dtype: np.typing.DTypeLike = np.float64, align: int = 64) -> np.ndarray:
    """`np.empty(shape, dtype)` starting on an `align`-byte boundary, outside the pool (e.g. for
    BLAS, which then sees the same alignment whatever address malloc gave)."""
    dtype = np.dtype(dtype)
    shape = (int(shape),) if np.ndim(shape) == 0 else tuple(int(s) for s in shape)  # type: ignore[arg-type]
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + align, np.uint8)
    off = -raw.ctypes.data % align
    return raw[off : off + nbytes].view(dtype).reshape(shape)


def _reset_after_fork() -> None:
    for p in list(_pools):
        p._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)

#: the process-wide pool
pool = BufferPool()


def empty(shape: int | Sequence[int], dtype: np.typing.DTypeLike = np.float64, align: int = 64) -> np.ndarray:
    """An uninitialised array from the process-wide pool (see the module docstring)."""
    return pool.empty(shape, dtype, align)
