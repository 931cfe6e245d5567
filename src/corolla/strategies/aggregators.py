"""Aggregators fold replies one at a time (``add``) and produce the round's aggregate (``result``).

The accumulator lives for one round and is never checkpointed; an interrupted round is redone.
Memory is O(model), whatever the number of replies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..records import Arrays, Metrics
from .base import RoundCtx, State, StrategyError, Update


@dataclass
class MeanAcc:
    sums: dict[str, np.ndarray] = field(default_factory=dict)  # float64 sum of w * x
    tmp: dict[str, np.ndarray] = field(default_factory=dict)  # scratch, reused per reply
    weight: float = 0.0
    count: int = 0
    base: Arrays | None = None
    side: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Mean:
    """Weighted mean of the nodes' arrays (weights: `Update.weight`), as an update to the base.

    Linear, so it streams and can later sit on a secure sum. Sums in float64 whatever the
    input dtype; the result has the input dtype.
    """

    weighted: bool = True
    #: trait: result is a function of the sum of per-update encodings (so it can stream, or sit on a secure sum)
    linear = True

    def min_updates(self) -> int:
        return 1

    def init(self, spec: Arrays) -> State:
        return {}

    def open(self, state: State, ctx: RoundCtx) -> MeanAcc:
        return MeanAcc()

    def add(self, acc: MeanAcc, u: Update) -> MeanAcc:
        w = float(u.weight) if self.weighted else 1.0
        if not np.isfinite(w) or w < 0:
            raise StrategyError(f"node {u.node} sent weight {w}; weights must be finite and >= 0")
        if acc.base is None:
            acc.base = u.base
            for k, v in u.arrays.items():
                acc.sums[k] = np.zeros(v.shape, np.float64)
                acc.tmp[k] = np.empty(v.shape, np.float64)
        for k, v in u.arrays.items():
            tmp = acc.tmp[k]
            np.copyto(tmp, v)  # a plain widening copy is ~1.6x faster than a casting multiply
            if w != 1.0:
                np.multiply(tmp, w, out=tmp)
            np.add(acc.sums[k], tmp, out=acc.sums[k])
        for k, v in u.side.items():
            acc.side[k] = acc.side.get(k, 0.0) + w * np.asarray(v, np.float64)
        acc.weight += w
        acc.count += 1
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
        for k, s in acc.sums.items():
            s /= acc.weight
            base = acc.base[k]
            out[k] = (s - base).astype(base.dtype, copy=False)
        metrics: Metrics = {"num-updates": acc.count, "weight-sum": acc.weight}
        for k, v in acc.side.items():  # side statistics (e.g. a clipped bit) as weighted sums
            if np.ndim(v) == 0:
                metrics[f"side/{k}"] = float(v)
        return out, state, metrics


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
