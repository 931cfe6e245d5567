"""`UpdateBuffer`: a round's individual updates, for aggregators that must see every one.

Robust rules (median, trimmed mean, Krum, Bulyan, geometric median) are not functions of a
sum, so they cannot stream like `Mean`. The buffer keeps each node's update
``delta = arrays - base``, flattened to one vector, plus its weight and node id:

* in RAM up to ``memory_budget`` bytes (default 1 GiB), then
* spilled to a ``numpy.memmap`` over an anonymous temporary file (``spill_dir``, default the
  system temp dir). The file is unlinked as soon as it is created, so it disappears when the
  buffer is closed, garbage collected, or the process dies: 1,000 updates of a large model
  need disk, not RAM.

Reducers read it **column-blocked**: `blocks` yields ``(n_rows, block)`` float64 matrices
whose size is bounded by ``block_bytes``, so a coordinate-wise median over a spilled buffer
needs O(block) memory plus the O(model) result. `pairwise_sq_distances` (for Krum) is
accumulated block by block too.

Rows are exposed in a canonical order (by node id, then arrival), so results do not depend
on the order in which replies arrived.
"""

from __future__ import annotations

import tempfile
import weakref
from collections.abc import Iterator, Sequence
from typing import IO, Any

import numpy as np

from ..records import Arrays
from .base import StrategyError, Update

DEFAULT_MEMORY_BUDGET = 1 << 30  # 1 GiB
DEFAULT_BLOCK_BYTES = 32 << 20  # one float64 column block: 32 MiB


def _storage_dtype(arrays: Arrays) -> np.dtype:
    """float32 when every array is exactly representable in float32 (float16/32, small ints,
    bool); float64 otherwise. Complex arrays are refused."""
    small = {np.dtype(t) for t in ("float16", "float32", "int8", "int16", "uint8", "uint16", "bool")}
    dtypes = {np.asarray(v).dtype for v in arrays.values()}
    for k, v in arrays.items():
        if np.asarray(v).dtype.kind == "c":
            raise StrategyError(f"array {k!r} is complex; robust aggregators order coordinates and need real arrays")
    return np.dtype(np.float32) if dtypes <= small else np.dtype(np.float64)


def _close_file(f: IO[bytes]) -> None:
    try:
        f.close()
    except Exception:  # pragma: no cover - best effort at GC time
        pass


class UpdateBuffer:
    """The round's updates as rows of an ``(n, dim)`` matrix, in RAM and then on disk."""

    def __init__(
        self,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        *,
        dtype: Any = None,
        spill_dir: str | None = None,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
    ):
        if memory_budget < 0:
            raise StrategyError(f"memory_budget must be >= 0 bytes, got {memory_budget}")
        if block_bytes <= 0:
            raise StrategyError(f"block_bytes must be > 0, got {block_bytes}")
        self.memory_budget = int(memory_budget)
        self.block_bytes = int(block_bytes)
        self.spill_dir = spill_dir
        self._dtype: np.dtype | None = None if dtype is None else np.dtype(dtype)
        self.base: Arrays | None = None
        self._keys: list[str] = []
        self._shapes: list[tuple[int, ...]] = []
        self._offsets: list[int] = []
        self.dim = 0
        self._rows: list[np.ndarray] = []  # RAM phase
        self._file: IO[bytes] | None = None  # spill phase
        self._finalizer: weakref.finalize | None = None
        self._flushed = True
        self._nodes: list[int] = []
        self._weights: list[float] = []
        self._order: np.ndarray | None = None  # canonical position -> physical row
        self.closed = False

    # -- filling ------------------------------------------------------------------
    def _layout(self, u: Update) -> None:
        self.base = u.base
        if self._dtype is None:
            self._dtype = _storage_dtype(u.arrays)
        off = 0
        for k, v in u.arrays.items():
            v = np.asarray(v)
            self._keys.append(k)
            self._shapes.append(v.shape)
            self._offsets.append(off)
            off += v.size
        self.dim = off

    def add(self, u: Update) -> None:
        """Store ``u.arrays - u.base`` (computed in float64, stored in the buffer dtype)."""
        if self.closed:
            raise StrategyError("UpdateBuffer is closed")
        if self.base is None:
            self._layout(u)
        if list(u.arrays.keys()) != self._keys:
            raise StrategyError(
                f"node {u.node} sent arrays {list(u.arrays.keys())} but the round's first update had {self._keys}"
            )
        w = float(u.weight)
        if not np.isfinite(w) or w < 0:
            raise StrategyError(f"node {u.node} sent weight {w}; weights must be finite and >= 0")
        assert self._dtype is not None
        row = np.empty(self.dim, self._dtype)
        for k, shape, off in zip(self._keys, self._shapes, self._offsets):
            a = np.asarray(u.arrays[k])
            if a.shape != shape:
                raise StrategyError(f"node {u.node} sent {k!r} with shape {a.shape}, expected {shape}")
            np.subtract(
                a.reshape(-1),
                np.asarray(u.base[k]).reshape(-1),
                out=row[off : off + a.size],
                dtype=np.float64,
                casting="unsafe",
            )
        self._store(row)
        self._nodes.append(int(u.node))
        self._weights.append(w)
        self._order = None

    def _store(self, row: np.ndarray) -> None:
        if self._file is None and (len(self._rows) + 1) * row.nbytes > self.memory_budget and row.nbytes > 0:
            self._spill()
        if self._file is None:
            self._rows.append(row)
        else:
            self._file.write(memoryview(row))
            self._flushed = False

    def _spill(self) -> None:
        """Move the RAM rows to an unlinked temporary file; later rows go straight there."""
        f = tempfile.TemporaryFile(dir=self.spill_dir)
        self._file = f
        self._finalizer = weakref.finalize(self, _close_file, f)
        for r in self._rows:
            f.write(memoryview(r))
        self._rows = []

    # -- reading ------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._nodes)

    @property
    def spilled(self) -> bool:
        return self._file is not None

    @property
    def dtype(self) -> np.dtype:
        return self._dtype if self._dtype is not None else np.dtype(np.float64)

    @property
    def nbytes(self) -> int:
        return len(self) * self.dim * self.dtype.itemsize

    def _canonical(self) -> np.ndarray:
        if self._order is None:
            self._order = np.lexsort((np.arange(len(self._nodes)), np.asarray(self._nodes, np.int64)))
        return self._order

    @property
    def nodes(self) -> np.ndarray:
        """Node ids in canonical order (sorted by node id)."""
        return np.asarray(self._nodes, np.int64)[self._canonical()]

    @property
    def weights(self) -> np.ndarray:
        """Weights (float64) in canonical order."""
        return np.asarray(self._weights, np.float64)[self._canonical()]

    def _map(self) -> np.memmap:
        """A read-only memmap of the spill file. `blocks` maps it afresh for each block and drops
        it after copying, so the pages read are unmapped again: the process's resident memory
        stays O(block) (the kernel's page cache may keep them, reclaimably)."""
        assert self._file is not None
        if not self._flushed:
            self._file.flush()
            self._flushed = True
        return np.memmap(self._file, dtype=self.dtype, mode="r", shape=(len(self), self.dim))

    def block_cols(self, n_rows: int) -> int:
        """Columns per block so that an (n_rows, cols) float64 block fits `block_bytes`."""
        return max(1, min(max(self.dim, 1), self.block_bytes // (8 * max(n_rows, 1))))

    def blocks(
        self, rows: Sequence[int] | np.ndarray | None = None, cols: int | None = None
    ) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield ``(column slice, float64 block)`` covering all coordinates.

        `rows` are canonical positions (default: all, in canonical order); block row ``i`` is
        update ``rows[i]``. Each block is a fresh array the caller may modify."""
        if self.closed:
            raise StrategyError("UpdateBuffer is closed")
        order = self._canonical()
        phys = order if rows is None else order[np.asarray(rows, np.int64)]
        step = cols or self.block_cols(len(phys))
        srt = np.argsort(phys, kind="stable")  # ascending physical rows read the file in order
        for c0 in range(0, self.dim, step):
            c1 = min(self.dim, c0 + step)
            if self.spilled:
                src = self._map()
                block = np.empty((len(phys), c1 - c0), np.float64)
                block[srt] = src[phys[srt], c0:c1]
                del src
            else:
                block = np.empty((len(phys), c1 - c0), np.float64)
                for i, p in enumerate(phys):
                    block[i] = self._rows[p][c0:c1]
            yield slice(c0, c1), block

    def row(self, i: int) -> np.ndarray:
        """Canonical row `i` as a float64 vector."""
        out = np.empty(self.dim, np.float64)
        for sl, b in self.blocks([i]):
            out[sl] = b[0]
        return out

    def pairwise_sq_distances(self, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """``D[i, j] = ||x_i - x_j||^2`` over canonical rows, accumulated block by block.

        Each block is centred (distances are translation invariant) before its Gram matrix is
        taken, which keeps the ``|a|^2 + |b|^2 - 2ab`` form accurate when updates are close."""
        k = len(self) if rows is None else len(rows)
        gram = np.zeros((k, k), np.float64)
        for _, b in self.blocks(rows):
            b -= b.mean(axis=0)
            gram += b @ b.T
        sq = np.diag(gram).copy()
        d = sq[:, None] + sq[None, :] - 2.0 * gram
        d = 0.5 * (d + d.T)
        np.maximum(d, 0.0, out=d)
        np.fill_diagonal(d, 0.0)
        return d

    def unflatten(self, vec: np.ndarray, *, cast: bool = True) -> Arrays:
        """A flat vector back to named arrays shaped like the base (in the base dtypes if `cast`)."""
        assert self.base is not None
        out = Arrays()
        for k, shape, off in zip(self._keys, self._shapes, self._offsets):
            size = int(np.prod(shape, dtype=np.int64))
            v = vec[off : off + size].reshape(shape)
            out[k] = v.astype(np.asarray(self.base[k]).dtype, copy=True) if cast else v.copy()
        return out

    # -- lifetime -------------------------------------------------------------------
    def close(self) -> None:
        """Drop the rows and delete the spill file (also done at garbage collection)."""
        self._rows = []
        if self._finalizer is not None:
            self._finalizer()  # closes (and thereby deletes) the unlinked temporary file
            self._finalizer = None
        self._file = None
        self.closed = True

    def __enter__(self) -> "UpdateBuffer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
