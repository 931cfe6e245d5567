"""Aggregators fold replies one at a time (``add``) and produce the round's aggregate (``result``).

The accumulator lives for one round and is never checkpointed; an interrupted round is redone.
Memory is O(model), whatever the number of replies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..records import Arrays, Metrics
from .base import RoundCtx, State, StrategyError, Update

#: elements per column block of a fold: the fold's float64 staging rows (one per pending update,
#: plus the accumulator, the base and one for the result) are this long
BLOCK = 1 << 16


@dataclass
class MeanAcc:
    sums: dict[str, np.ndarray] = field(default_factory=dict)  # float64 sum of w * x over folded updates
    pending: list[tuple[float, Arrays]] = field(default_factory=list)  # the window: not folded yet
    pending_bytes: int = 0
    weight: float = 0.0
    count: int = 0
    base: Arrays | None = None
    side: dict[str, Any] = field(default_factory=dict)
    spec: tuple[tuple[str, tuple[int, ...]], ...] = ()  # (name, shape) of every array, from the first update
    scratch: np.ndarray | None = None  # float64 staging rows, reused by every fold of the round
    hot: bool = False  # fold each update as it arrives (the accumulator fits in cache)
    tmp: dict[str, np.ndarray] = field(default_factory=dict)  # float64 scratch of the hot path


@dataclass(frozen=True)
class Mean:
    """Weighted mean of the nodes' arrays (weights: `Update.weight`), as an update to the base.

    Linear, so it streams and can later sit on a secure sum. Sums in float64 whatever the
    input dtype; the result has the input dtype.

    **Windowed fold.** `add` keeps a reference to the update's arrays until `window` updates
    (or `window_bytes` of their arrays) are pending, then folds them together, in column blocks
    of `BLOCK` elements: each pending update's block is widened to float64 into a staging row
    that stays in cache, and one multiply-add pass (`np.einsum`) sums the rows into the float64
    accumulator. So every update byte is read from memory once, and the accumulator once per
    window instead of once per update. `result` folds the last window straight into the output
    (``sum / weight - base``, cast, in the same block pass): a round that fits in one window
    never allocates the float64 accumulator at all.

    **Hot fold.** When the float64 accumulator is smaller than `hot_below` (16 MiB: two
    million parameters) it stays in cache anyway, and each update is folded the moment it
    arrives, while the reply is still in cache too (a simulation worker has just written it).
    That is faster than holding replies for a window: measured on the 2-core machine, 1000
    replies of 1e6 parameters through the process backend took ~10 % longer per round with the
    window.

    Memory: references to at most one window of updates, the accumulator (8 bytes per
    parameter, once a round outgrows a window) and ``(window + 3) * BLOCK`` float64 of staging:
    bounded, whatever the number of nodes. The byte budget also keeps the window within what
    the process backend's reply rings hold (about 8 replies of a large model per worker);
    holding more makes workers map fresh rings, which costs more than the fold saves.

    An added update's arrays must not change until the window is folded (at the latest by
    `result`). Replies don't: the process backend's live in shared memory that is not reused
    while referenced. ``window=1`` folds each update at once, for arrays that may change.

    The fold order is fixed (the rows of an element are summed in `add` order, windows close at
    fixed counts and sizes), so the result is bit-reproducible for a given sequence of updates.
    It is the plain float64 ``sum(w * x) / sum(w) - base`` but for the division, done as a
    multiplication by ``1 / sum(w)``; with float32 arrays and integer weights the sums are
    bit-identical (each product is exact), so after the cast the two practically never differ.
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
        return MeanAcc()

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
            params = sum(int(np.prod(shape, dtype=np.int64)) for _, shape in spec)
            acc.hot = params * 8 < self.hot_below and all(arrays[k].dtype.kind in "fiub" for k in arrays)
        elif tuple(spec) != acc.spec:
            raise StrategyError(f"node {u.node} sent arrays {dict(spec)}; the first update had {dict(acc.spec)}")
        for k, v in u.side.items():
            acc.side[k] = acc.side.get(k, 0.0) + w * np.asarray(v, np.float64)
        acc.weight += w
        acc.count += 1
        if acc.hot:
            for k in arrays:
                s = acc.sums.get(k)
                if s is None:
                    s = acc.sums[k] = np.zeros(arrays[k].size, np.float64)
                    acc.tmp[k] = np.empty(arrays[k].size, np.float64)
                tmp = acc.tmp[k]
                np.copyto(tmp, arrays[k].reshape(-1))  # a widening copy is ~1.6x faster than a casting multiply
                if w != 1.0:
                    np.multiply(tmp, w, out=tmp)
                np.add(s, tmp, out=s)
            return acc
        acc.pending.append((w, arrays))
        acc.pending_bytes += nbytes
        if len(acc.pending) >= self.window or acc.pending_bytes >= self.window_bytes:
            self._fold(acc, None)
        return acc

    def result(self, acc: MeanAcc, state: State, ctx: RoundCtx) -> tuple[Arrays, State, Metrics]:
        if acc.count == 0:
            raise StrategyError("Mean got no updates this round")
        if acc.weight <= 0:
            raise StrategyError(
                "all replies this round carry weight 0 (num-examples = 0); report the number of "
                "training examples in the reply metrics as 'num-examples'"
            )
        assert acc.base is not None
        out = Arrays()
        self._fold(acc, out)
        acc.sums.clear()
        acc.tmp.clear()
        acc.scratch = None
        metrics: Metrics = {"num-updates": acc.count, "weight-sum": acc.weight}
        for k, v in acc.side.items():  # side statistics (e.g. a clipped bit) as weighted sums
            if np.ndim(v) == 0:
                metrics[f"side/{k}"] = float(v)
        return out, state, metrics

    def _fold(self, acc: MeanAcc, out: Arrays | None) -> None:
        """Fold the pending window into `acc.sums`; with `out` (the last fold), write
        ``(sums + window) / weight - base`` there instead, in the base's dtypes."""
        pending, acc.pending, acc.pending_bytes = acc.pending, [], 0
        if not pending and out is None:
            return
        assert acc.base is not None
        ws = [w for w, _ in pending]
        for key, shape in acc.spec:
            # the rows of this fold: the folded windows' sum, then the window in add order
            rows = [a[key].reshape(-1) for _, a in pending]
            s = acc.sums.get(key)
            if out is None:
                if s is None:
                    s = acc.sums[key] = np.empty(int(np.prod(shape, dtype=np.int64)), np.float64)
                    _fold_blocks(acc, rows, ws, s, None)
                else:
                    _fold_blocks(acc, [s, *rows], [1.0, *ws], s, None)
            else:
                base = acc.base[key]
                dst = np.empty(base.shape, base.dtype)
                rows, ws_k = ([s, *rows], [1.0, *ws]) if s is not None else (rows, ws)
                _fold_blocks(acc, rows, ws_k, dst.reshape(-1), (1.0 / acc.weight, base.reshape(-1)))
                out[key] = dst


def _fold_blocks(
    acc: MeanAcc, rows: list[np.ndarray], w: list[float], dst: np.ndarray, final: tuple[float, np.ndarray] | None
) -> None:
    """``dst = sum_i w[i] * rows[i]`` in float64; with ``final = (scale, base)``, then
    ``dst = (that * scale - base)`` cast to dst's dtype.

    In column blocks of `BLOCK` elements: each row's block is widened into a float64 staging
    row (so every source byte is read from memory once), then one multiply-add pass
    (`np.einsum`) sums the staged rows into the block's accumulator, which stays in cache for
    all rows. Per element the order is fixed: ``((0 + w0 r0) + w1 r1) + ...``.
    """
    n = len(rows)
    if acc.scratch is None or acc.scratch.shape[0] < n + 2:
        longest = max((int(np.prod(shape, dtype=np.int64)) for _, shape in acc.spec), default=1)
        acc.scratch = np.empty((n + 2, max(1, min(BLOCK, longest))))
    stage = acc.scratch
    block = stage.shape[1]
    wv = np.array(w, np.float64)
    for lo in range(0, dst.size, block):
        hi = min(lo + block, dst.size)
        y = stage[:n, : hi - lo]
        for j, r in enumerate(rows):
            np.copyto(y[j], r[lo:hi])
        if final is None:
            np.einsum("i,ij->j", wv, y, out=dst[lo:hi])
        else:
            t, b = stage[n, : hi - lo], stage[n + 1, : hi - lo]
            np.einsum("i,ij->j", wv, y, out=t)
            np.multiply(t, final[0], out=t)
            np.copyto(b, final[1][lo:hi])
            np.subtract(t, b, out=t)
            np.copyto(dst[lo:hi], t, casting="unsafe")  # (a casting multiply is ~5x slower)


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
