"""Aggregators fold replies one at a time (``add``) and produce the round's aggregate (``result``).

The accumulator lives for one round and is never checkpointed; an interrupted round is redone.
Memory is O(model), whatever the number of replies.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import buffers
from ..records import Arrays, Metrics
from .base import RoundCtx, State, StrategyError, Update
from .parallel import halves, in_parallel

#: elements per column block of a fold: the fold's float64 staging rows (one per pending update,
#: plus the accumulator, the base and one for the result) are this long
BLOCK = 1 << 16
#: at most this many elements (rows x columns) per BLAS gemv call, below OpenBLAS's threading
#: threshold (9216): see `_weighted_rows`
GEMV_ELEMS = 8192
#: a thread keeps its staging rows for its next fold up to this size (see `_staging`)
KEEP_STAGING_BYTES = 32 << 20


@dataclass
class MeanAcc:
    sums: dict[str, list[np.ndarray]] = field(default_factory=dict)  # float64 sum of w * x / sums_weight, in segments
    sums_weight: float = 1.0  # the sums' row weight: a lone first update is kept unscaled (a plain widening copy)
    pending: list[tuple[float, Arrays]] = field(default_factory=list)  # the window: not folded yet
    pending_bytes: int = 0
    weight: float = 0.0
    count: int = 0
    base: Arrays | None = None
    side: dict[str, Any] = field(default_factory=dict)
    spec: tuple[tuple[str, tuple[int, ...]], ...] = ()  # (name, shape) of every array, from the first update
    width: int = 8  # elements per staging row: BLOCK, or the longest array if shorter, in whole 64-byte lines
    hot: bool = False  # fold each update as it arrives (the accumulator fits in cache)
    cohort: int = 0  # updates expected this round (RoundCtx.cohort; 0: not known)
    hold: bool = False  # keep every update until `result`: they take no more memory than the sums would
    tmp: dict[str, np.ndarray] = field(default_factory=dict)  # float64 scratch of the hot path


@dataclass(frozen=True)
class Mean:
    """Weighted mean of the nodes' arrays (weights: `Update.weight`), as an update to the base.

    Linear, so it streams and can later sit on a secure sum. Sums in float64 whatever the
    input dtype; the result has the input dtype.

    **Windowed fold.** `add` keeps a reference to the update's arrays until `window` updates
    (or `window_bytes` of their arrays) are pending, then folds them together, in column blocks
    of `BLOCK` elements: each pending update's block is widened to float64 into a staging row
    that stays in cache, and one weighted sum of the rows (a single-threaded BLAS gemv, see
    `_weighted_rows`) writes the float64 accumulator's block. So every update byte is read from
    memory once, and the accumulator once per window instead of once per update. `result`
    folds the last window straight into the output, in the same block pass: the base is one
    more row, of weight ``-sum(w)``, and the block is multiplied by ``1 / sum(w)`` and cast.
    A round that fits in one window never allocates the float64 accumulator at all. When the
    round's cohort is known (`RoundCtx.cohort`) and its updates together take no more memory than
    the float64 sums would (two float32 updates, or one), all are held and `result` folds them,
    the base and the scaling in one pass, whatever their size. A lone
    first update is only widened into the sums (its weight applied in the next fold). Large
    folds run in two threads, one per span of the arrays (see `parallel.in_parallel`); the sums of a
    large array are segments of the array's own byte size from `corolla.buffers`, so a
    deployment's driver reuses the same blocks for replies, sums and results every round.

    **Hot fold.** When the float64 accumulator is smaller than `hot_below` (16 MiB: two
    million parameters) it stays in cache anyway, and each update is folded the moment it
    arrives, while the reply is still in cache too (a simulation worker has just written it).
    That is faster than holding replies for a window: measured on the 2-core machine, 1000
    replies of 1e6 parameters through the process backend took ~10 % longer per round with the
    window.

    Memory: references to at most one window of updates, the accumulator (8 bytes per
    parameter, once a round outgrows a window) and ``(window + 3) * BLOCK`` float64 of staging
    (9.5 MiB by default, which each folding thread keeps for its next round, see `_staging`):
    bounded, whatever the number of nodes. The byte budget also keeps the window within what
    the process backend's reply rings hold (about 8 replies of a large model per worker);
    holding more makes workers map fresh rings, which costs more than the fold saves.

    An added update's arrays must not change until the window is folded (at the latest by
    `result`). Replies don't: the process backend's live in shared memory that is not reused
    while referenced. ``window=1`` folds each update at once, for arrays that may change.

    The fold is deterministic: windows close at fixed counts and sizes, and blocks and gemv
    chunks depend only on the shapes. So the result is bit-reproducible for a given sequence
    of updates, on a given machine with a given numpy and BLAS. (The order in which the rows
    of an element are summed is the BLAS kernel's, which may group them, so another CPU or
    BLAS may round a float64 sum's last bit differently.)

    The result is the float64 ``(sum(w * x) - sum(w) * base) * (1 / sum(w))``, cast. With
    float32 arrays and integer weights every product is exact, ``sum(w) * base`` included, so
    it differs from the plain ``sum(w * x) / sum(w) - base`` only in the sum's roundings and
    the final scaling, and after the cast the two practically never differ (the benchmark's
    ``--check``: no element of 1e7 at 10 and at 100 updates). And updates that all equal the
    base then give exactly a zero update.
    """

    weighted: bool = True
    #: updates held before they are folded (1: fold each at once)
    window: int = 16
    #: ... or fewer, once their arrays reach this many bytes (see the class docstring)
    window_bytes: int = 384 << 20
    #: below this many bytes of float64 accumulator, fold each update as it arrives instead
    hot_below: int = 16 << 20
    #: trait: result is a function of the sum of per-update encodings (so it can stream, or sit on a secure sum)
    linear = True

    def __post_init__(self) -> None:
        if not isinstance(self.window, (int, np.integer)) or isinstance(self.window, bool) or self.window < 1:
            raise StrategyError(f"Mean.window must be an integer >= 1, got {self.window!r}")
        if self.window_bytes < 0:
            raise StrategyError(f"Mean.window_bytes must be >= 0, got {self.window_bytes!r}")

    def min_updates(self) -> int:
        return 1

    def init(self, spec: Arrays) -> State:
        return {}

    def open(self, state: State, ctx: RoundCtx) -> MeanAcc:
        return MeanAcc(cohort=ctx.cohort)

    def add(self, acc: MeanAcc, u: Update) -> MeanAcc:
        w = float(u.weight) if self.weighted else 1.0
        if not math.isfinite(w) or w < 0:
            raise StrategyError(f"node {u.node} sent weight {w}; weights must be finite and >= 0")
        arrays = u.arrays
        spec, nbytes = [], 0
        for k in arrays:
            v = arrays[k]
            spec.append((k, v.shape))
            nbytes += v.nbytes
        if acc.base is None:
            acc.base, acc.spec = u.base, tuple(spec)
            sizes = [int(np.prod(shape, dtype=np.int64)) for _, shape in spec]
            params = sum(sizes)
            acc.width = -(-max(1, min(BLOCK, max(sizes, default=1))) // 8) * 8
            acc.hot = params * 8 < self.hot_below and all(arrays[k].dtype.kind in "fiub" for k in arrays)
            acc.hold = not acc.hot and 0 < acc.cohort <= self.window and acc.cohort * nbytes <= 8 * params
        elif tuple(spec) != acc.spec:
            raise StrategyError(f"node {u.node} sent arrays {dict(spec)}; the first update had {dict(acc.spec)}")
        for k, v in u.side.items():
            acc.side[k] = acc.side.get(k, 0.0) + w * np.asarray(v, np.float64)
        acc.weight += w
        acc.count += 1
        if acc.hot:
            for k in arrays:
                if k not in acc.sums:
                    acc.sums[k] = [np.zeros(arrays[k].size, np.float64)]
                    acc.tmp[k] = np.empty(arrays[k].size, np.float64)
                s = acc.sums[k][0]
                tmp = acc.tmp[k]
                np.copyto(tmp, arrays[k].reshape(-1))  # a widening copy is ~1.6x faster than a casting multiply
                if w != 1.0:
                    np.multiply(tmp, w, out=tmp)
                np.add(s, tmp, out=s)
            return acc
        acc.pending.append((w, arrays))
        acc.pending_bytes += nbytes
        if acc.hold:  # a small cohort of large updates (e.g. 2 of float32): one pass, in `result`
            if len(acc.pending) > acc.cohort:  # more updates than the cohort announced
                self._fold(acc, None)
            return acc
        # a large update is folded at once: holding two of them costs more memory than the
        # accumulator they would spare (a deployment's driver owns each reply's buffer)
        big = 2 * nbytes > self.window_bytes
        if len(acc.pending) >= self.window or acc.pending_bytes >= self.window_bytes or big:
            self._fold(acc, None)
        return acc

    def result(self, acc: MeanAcc, state: State, ctx: RoundCtx) -> tuple[Arrays, State, Metrics]:
        return self._finish(acc, state, relative=True)

    def result_params(self, acc: MeanAcc, state: State, ctx: RoundCtx) -> tuple[Arrays, State, Metrics]:
        """``base + result``, the weighted mean of the replies themselves, in the fold's last
        pass and rounded once: what ``SGD(1)`` (FedAvg) would make of `result` in a pass of its
        own (`Strategy.close` asks for this when the step is exactly that). For floating arrays;
        an integer array's mean is cast (truncated) as `result`'s update would be."""
        return self._finish(acc, state, relative=False)

    def _finish(self, acc: MeanAcc, state: State, relative: bool) -> tuple[Arrays, State, Metrics]:
        if acc.count == 0:
            raise StrategyError("Mean got no updates this round")
        if acc.weight <= 0:
            raise StrategyError(
                "all replies this round carry weight 0 (num-examples = 0); report the number of "
                "training examples in the reply metrics as 'num-examples'"
            )
        assert acc.base is not None
        out = Arrays()
        self._fold(acc, out, relative)
        acc.sums.clear()
        acc.tmp.clear()
        metrics: Metrics = {"num-updates": acc.count, "weight-sum": acc.weight}
        for k, v in acc.side.items():  # side statistics (e.g. a clipped bit) as weighted sums
            if np.ndim(v) == 0:
                metrics[f"side/{k}"] = float(v)
        return out, state, metrics

    def _fold(self, acc: MeanAcc, out: Arrays | None, relative: bool = True) -> None:
        """Fold the pending window into `acc.sums`; with `out` (the last fold), write
        ``(sums + window - weight * base) / weight`` there instead, in the base's dtypes (without
        ``- weight * base`` when not `relative`: the mean itself)."""
        pending, acc.pending, acc.pending_bytes = acc.pending, [], 0
        if not pending and out is None:
            return
        assert acc.base is not None
        # the rows of a fold: the folded windows' sum (of every array, or of none yet), the
        # window in add order, then, in the last fold, the base, of weight -weight (which spares
        # a subtraction pass); the last fold scales the sum by 1 / weight on its way to the output
        summed = bool(acc.sums)
        if out is None and not summed and len(pending) == 1:
            # a lone update starts the sums: widened as it is, its weight kept as the sums' row
            # weight for the next fold (about 4x cheaper than a weighted pass; same products)
            (acc.sums_weight, arrays), *_ = pending
            for key, _ in acc.spec:
                base = acc.base[key]
                segs = acc.sums[key] = _accumulator(base.size, base.itemsize)
                col = arrays[key].reshape(-1)
                in_parallel([(np.copyto, seg, col[lo:hi]) for lo, hi, seg in _spans(segs, base.size)])
            return
        with_base = out is not None and relative
        w = np.array([acc.sums_weight] * summed + [wi for wi, _ in pending] + [-acc.weight] * with_base)
        for key, _ in acc.spec:
            base = acc.base[key]
            if out is None and not summed:
                acc.sums[key] = _accumulator(base.size, base.itemsize)
            cols = [a[key].reshape(-1) for _, a in pending]
            segs = acc.sums[key] if summed or out is None else None  # None: one window, straight to the output
            if out is None:
                jobs = [
                    (_fold_blocks, [seg] * summed + [c[lo:hi] for c in cols], w, seg, acc.width)
                    for lo, hi, seg in _spans(segs, base.size)
                ]
            else:
                dst = buffers.empty(base.shape, base.dtype)
                flat, cols = dst.reshape(-1), [*cols, base.reshape(-1)] if with_base else cols
                jobs = [
                    (_fold_blocks, [seg] * summed + [c[lo:hi] for c in cols], w, flat[lo:hi], acc.width, 1 / acc.weight)
                    for lo, hi, seg in _spans(segs, base.size)
                ]
                out[key] = dst
            in_parallel(jobs)
        acc.sums_weight = 1.0


def _spans(segs: list[np.ndarray] | None, n: int) -> list[tuple[int, int, Any]]:
    """(lo, hi, part of a segment) covering the sums' segments, each large one cut in two (so
    two threads can share the pass); with no sums (`segs` None), the range [0, n) cut the same
    way, with None for the segment part."""
    if segs is None:
        return [(lo, hi, None) for lo, hi in halves(n, n * 8)]
    out, off = [], 0
    for seg in segs:
        out.extend((off + lo, off + hi, seg[lo:hi]) for lo, hi in halves(seg.size, seg.nbytes))
        off += seg.size
    return out


def _accumulator(n: int, itemsize: int) -> list[np.ndarray]:
    """The float64 sums of an array of `n` elements of `itemsize` bytes, in segments of (about)
    the array's own byte size, from the buffer pool (`corolla.buffers`). A float32 model's sum is
    two blocks of the model's size, so the pool can hand the same blocks to replies, sums and
    results round after round, instead of needing one block twice as large (which would have to
    be held in addition, or faulted in fresh every round)."""
    if n * 8 < buffers.pool.min_bytes:
        return [buffers.aligned_empty(n)]
    step = -(-n * itemsize // 64) * 8  # n * itemsize bytes of float64, up to a multiple of 8 elements (64 bytes)
    if step * 8 < buffers.pool.min_bytes:
        return [buffers.empty(n, np.float64)]  # segments too small to pool: one pooled block
    return [buffers.empty(min(step, n - lo), np.float64) for lo in range(0, n, step)]


_local = threading.local()


def _staging(rows: int, width: int) -> np.ndarray:
    """`rows` float64 staging rows of `width` elements, 64-byte aligned, from a per-thread buffer
    that outlives the round: page-faulting ~6 MiB of fresh staging every round cost ~4 ms, about
    10 % of a round of 10 updates of 1e7 parameters. Buffers over `KEEP_STAGING_BYTES` (only very
    large windows need them) are not kept. A fold runs to its end before the next one can start
    on the same thread, so folds never share the rows."""
    n = rows * width
    buf = getattr(_local, "staging", None)
    if buf is None or buf.size < n:
        buf = buffers.aligned_empty(n)  # 64-byte aligned: BLAS sees the same alignment every round
        if buf.nbytes <= KEEP_STAGING_BYTES:
            _local.staging = buf
    return buf[:n].reshape(rows, width)


def _fold_blocks(
    rows: list[np.ndarray], w: np.ndarray, dst: np.ndarray, width: int, scale: float | None = None
) -> None:
    """``dst = sum_i w[i] * rows[i]`` in float64, into the float64 accumulator `dst`; with
    `scale`, ``dst = (that * scale)`` cast to dst's dtype (the output). `dst` is contiguous.

    In column blocks of `width` elements: each row's block is widened into a float64 staging
    row that stays in cache (so every source byte is read from memory once), then one weighted
    sum of the staged rows (`_weighted_rows`) writes the block: straight into the accumulator
    (64-byte aligned like the staging rows), or into one more staging row, which is scaled and
    then copied, cast, into the output (a casting multiply would be slower).
    """
    n = len(rows)
    stage = _staging(n + 1, width)
    for lo in range(0, dst.size, width):
        hi = min(lo + width, dst.size)
        y = stage[:n, : hi - lo]
        for j, r in enumerate(rows):
            np.copyto(y[j], r[lo:hi])
        if scale is None:
            _weighted_rows(w, y, dst[lo:hi])
        else:
            t = stage[n, : hi - lo]
            _weighted_rows(w, y, t)
            np.multiply(t, scale, out=t)
            np.copyto(dst[lo:hi], t, casting="unsafe")


def _weighted_rows(w: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
    """``out = w @ y`` for float64 `y` of shape (rows, m), into the contiguous float64 `out`:
    BLAS ``dgemv``, single-threaded.

    numpy's own loops for this (`np.einsum`, or a multiply and an add per row) run at the SSE
    baseline, about 0.22 ns per element and row wherever the rows sit in cache; a gemv reads
    each row once, at about 0.13 ns. But a gemv over a whole block makes OpenBLAS split it
    across threads, which wake, spin and compete with simulation workers (measured on the
    2-core machine: 0.43 ns for 10 rows of 64K, 0.07-0.09 ns for 17 rows but with both cores
    busy), and whose split would make an element's summation order depend on the thread count.
    So `y` is cut into chunks of `GEMV_ELEMS // rows` columns (at least 8), and one batched
    `np.matmul` runs one gemv per chunk, in C, plus one for the remainder. Up to 1151 rows
    (any sane window), each chunk stays below the size at which OpenBLAS threads a gemv: 9216
    elements by its long-standing rule (0.3.31, measured here, stayed serial up to 34816).

    The chunks depend only on the shapes, so for a given machine and BLAS library the order in
    which an element's rows are summed is fixed, and the result bit-reproducible. That order
    is the BLAS kernel's (it may group rows), not necessarily row by row.
    """
    rows, m = y.shape
    cols = max(8, GEMV_ELEMS // rows // 8 * 8)
    k = m // cols
    kc = k * cols
    if k:  # (1, 1, rows) @ (k, rows, cols) -> (k, 1, cols), all views of y and out
        chunks = y[:, :kc].reshape(rows, k, cols).transpose(1, 0, 2)
        np.matmul(w.reshape(1, 1, rows), chunks, out=out[:kc].reshape(k, 1, cols))
    if kc < m:
        np.matmul(w, y[:, kc:], out=out[kc:])


class MetricsMean:
    """Streaming weighted mean of reply metrics (keys missing from a reply are skipped)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, metrics: Metrics, weight: float) -> None:
        for k, v in metrics.items():
            if k == "num-examples":
                continue
            self.sums[k] = self.sums.get(k, 0.0) + weight * float(v)
            self.weights[k] = self.weights.get(k, 0.0) + weight

    def result(self) -> Metrics:
        return {k: self.sums[k] / self.weights[k] for k in self.sums if self.weights[k] > 0}
