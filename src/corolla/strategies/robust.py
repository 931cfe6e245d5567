"""Byzantine-robust aggregation: buffered aggregators and the named strategies built on them.

Aggregators (the parts; each buffers the round's updates in an `UpdateBuffer`)::

    Median()                     coordinate-wise median, unweighted          (Yin et al., 2018)
    TrimmedMean(beta)            coordinate-wise beta-trimmed mean, unweighted (Yin et al., 2018)
    KrumSelect(f, m=1)           Krum scores; m=1: the best update (Krum), m>1: the weighted
                                 mean of the m best (Multi-Krum)             (Blanchard et al., 2017)
    BulyanAggregate(f)           Krum-select theta = n - 2f, then per coordinate the mean of the
                                 beta = theta - 2f values closest to their median (El Mhamdi et al., 2018)
    GeometricMedian(max_iter, eps, ftol)   smoothed Weiszfeld, weighted  (RFA, Pillutla et al., 2019/2022)

Named strategies (functions returning a `Strategy`, defaults as Flower 1.42)::

    FedMedian, FedTrimmedAvg(beta=0.2), Krum(num_malicious_nodes=0),
    MultiKrum(num_malicious_nodes=0, num_nodes_to_select=1), Bulyan(num_malicious_nodes=0), RFA()

The aggregator classes carry a suffix where a named strategy has the paper's name (`KrumSelect`
vs the `Krum` strategy, `BulyanAggregate` vs `Bulyan`); `Median`/`TrimmedMean`/`GeometricMedian`
are the rules themselves, their strategies `FedMedian`/`FedTrimmedAvg`/`RFA`.

Every aggregator follows `Mean`'s protocol: ``open(state, ctx) -> acc``, ``add(acc, update)``,
``result(acc, state, ctx) -> (update relative to the base, state, metrics)``; ``min_updates()``
is a function of f (Krum: n >= 2f + 3, Bulyan: n >= 4f + 3) and a short round raises
`StrategyError` naming n and f instead of being skipped. Traits: ``linear = False``,
``needs_individual_updates = True`` (they cannot sit on a secure sum).

Flower 1.42 parity (see tests/test_flower_parity_robust.py): Flower applies these rules to the
nodes' absolute arrays; corolla applies them to the updates ``arrays - base``. Median, trimmed
mean, Krum distances and Bulyan's selection are translation invariant, so both agree (up to
float rounding). Updates are processed in node-id order, not arrival order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Unpack

import numpy as np

from ..records import Arrays, Metrics
from .base import RoundCtx, State, StrategyError, Update
from .named import Selection, _compose
from .server_optimizers import SGD
from .strategy import Strategy
from .update_buffer import DEFAULT_MEMORY_BUDGET, UpdateBuffer

__all__ = [
    "RFA",
    "Bulyan",
    "BulyanAggregate",
    "FedMedian",
    "FedTrimmedAvg",
    "GeometricMedian",
    "Krum",
    "KrumSelect",
    "Median",
    "MultiKrum",
    "TrimmedMean",
    "UpdateBuffer",
]

# -- shared machinery ------------------------------------------------------------------


@dataclass(frozen=True)
class _Buffered:
    """Base of the buffered aggregators: buffer every update, reduce at the end of the round."""

    #: RAM for the round's updates before they spill to a temporary memmap (bytes)
    memory_budget: int = field(default=DEFAULT_MEMORY_BUDGET, kw_only=True)
    #: where spill files go (default: the system temp dir)
    spill_dir: str | None = field(default=None, kw_only=True)

    #: trait: not a function of a sum (no streaming, no secure aggregation)
    linear = False
    #: trait: must see each node's update in the clear
    needs_individual_updates = True

    def min_updates(self) -> int:
        return 1

    def init(self, spec: Arrays) -> State:
        return {}

    def open(self, state: State, ctx: RoundCtx) -> UpdateBuffer:
        return UpdateBuffer(self.memory_budget, spill_dir=self.spill_dir)

    def add(self, acc: UpdateBuffer, u: Update) -> UpdateBuffer:
        acc.add(u)
        return acc

    def _requirement(self) -> str:
        return ""

    def result(self, acc: UpdateBuffer, state: State, ctx: RoundCtx) -> tuple[Arrays, State, Metrics]:
        try:
            n, need = len(acc), self.min_updates()
            if n == 0:
                raise StrategyError(f"{type(self).__name__} got no updates this round")
            if n < need:
                raise StrategyError(
                    f"{type(self).__name__} needs at least {need} updates per round{self._requirement()} "
                    f"but round {ctx.round} has n={n}; sample more nodes (min_train_nodes >= {need}) "
                    f"or lower the number of malicious nodes f"
                )
            vec, metrics = self.reduce(acc, ctx)
            out = acc.unflatten(vec)
        finally:
            acc.close()
        return out, state, {"num-updates": n, **metrics}

    def reduce(self, buf: UpdateBuffer, ctx: RoundCtx) -> tuple[np.ndarray, Metrics]:  # pragma: no cover
        raise NotImplementedError


def _check_f(f: int, name: str) -> None:
    if not isinstance(f, (int, np.integer)) or isinstance(f, bool) or f < 0:
        raise StrategyError(f"{name}: the number of malicious nodes f must be an integer >= 0, got {f!r}")


def trimmed_mean(block: np.ndarray, beta: float) -> np.ndarray:
    """Mean over axis 0 after cutting ``int(beta * n)`` values from each end (Flower's and
    scipy's ``trim_mean`` rounding)."""
    n = block.shape[0]
    lo = int(beta * n)
    hi = n - lo
    part = np.partition(block, (lo, hi - 1), axis=0)
    return part[lo:hi].mean(axis=0)


def krum_scores(dist: np.ndarray, f: int) -> np.ndarray:
    """Krum score of each row: the sum of squared distances to its ``n - f - 2`` nearest
    others (at least 1, as Flower)."""
    n = dist.shape[0]
    k = max(1, n - f - 2)
    d = np.array(dist, np.float64)
    np.fill_diagonal(d, np.inf)  # a row's distance to itself never counts
    return np.sort(d, axis=1)[:, :k].sum(axis=1)


# -- aggregators -----------------------------------------------------------------------


@dataclass(frozen=True)
class Median(_Buffered):
    """Coordinate-wise median of the updates, unweighted (Yin et al., ICML 2018)."""

    def reduce(self, buf: UpdateBuffer, ctx: RoundCtx) -> tuple[np.ndarray, Metrics]:
        out = np.empty(buf.dim, np.float64)
        for sl, b in buf.blocks():
            out[sl] = np.median(b, axis=0)
        return out, {}


@dataclass(frozen=True)
class TrimmedMean(_Buffered):
    """Coordinate-wise trimmed mean, unweighted (Yin et al., ICML 2018).

    Cuts ``int(beta * n)`` values from each end of every coordinate (Flower's FedTrimmedAvg
    and scipy's ``trim_mean`` rounding), then averages the rest."""

    beta: float = 0.2

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.beta) < 0.5:
            raise StrategyError(f"TrimmedMean.beta must be in [0, 0.5), got {self.beta}")

    def reduce(self, buf: UpdateBuffer, ctx: RoundCtx) -> tuple[np.ndarray, Metrics]:
        out = np.empty(buf.dim, np.float64)
        for sl, b in buf.blocks():
            out[sl] = trimmed_mean(b, self.beta)
        cut = int(self.beta * len(buf))
        return out, {"trimmed-per-side": cut}


@dataclass(frozen=True)
class KrumSelect(_Buffered):
    """Krum / Multi-Krum selection (Blanchard et al., NeurIPS 2017).

    Each update's score is the sum of squared distances to its ``n - f - 2`` nearest
    neighbours; the `m` lowest scores are selected. ``m = 1`` (Krum) returns that update;
    ``m > 1`` (Multi-Krum) returns the mean of the selected updates **weighted** by
    `Update.weight` (num-examples), as Flower's MultiKrum does. Needs n >= 2f + 3."""

    f: int = 0
    m: int = 1

    def __post_init__(self) -> None:
        _check_f(self.f, "KrumSelect")
        if not isinstance(self.m, (int, np.integer)) or self.m < 1:
            raise StrategyError(f"KrumSelect.m (updates to select) must be an integer >= 1, got {self.m!r}")

    def min_updates(self) -> int:
        return max(2 * self.f + 3, self.m)

    def _requirement(self) -> str:
        return f" (Krum: n >= 2f + 3 with f={self.f}" + (f", and n >= m={self.m})" if self.m > 2 * self.f + 3 else ")")

    def reduce(self, buf: UpdateBuffer, ctx: RoundCtx) -> tuple[np.ndarray, Metrics]:
        scores = krum_scores(buf.pairwise_sq_distances(), self.f)
        sel = np.argsort(scores, kind="stable")[: self.m]
        w = buf.weights[sel]
        metrics: Metrics = {"selected": len(sel), "krum-score-min": float(scores[sel[0]])}
        if len(sel) == 1:
            return buf.row(int(sel[0])), metrics
        total = float(w.sum())
        if total <= 0:
            raise StrategyError(
                "the updates Multi-Krum selected all carry weight 0 (num-examples = 0); report the number "
                "of training examples in the reply metrics as 'num-examples'"
            )
        out = np.empty(buf.dim, np.float64)
        for sl, b in buf.blocks(sel):
            out[sl] = (w @ b) / total
        return out, {**metrics, "weight-sum": total}


@dataclass(frozen=True)
class BulyanAggregate(_Buffered):
    """Bulyan (El Mhamdi et al., ICML 2018), as Flower 1.42 implements it.

    1. select ``theta = n - 2f`` updates by Krum score;
    2. per coordinate, average (unweighted) the ``beta = theta - 2f`` selected values closest
       to the selected values' median.

    ``selection="scores"`` (default, Flower's ``select_multikrum``) ranks all n updates by one
    set of Krum scores and takes the theta best. ``selection="iterative"`` is the paper's
    recursion: run Krum on the remaining set, move its choice to the selection, repeat theta
    times. Needs n >= 4f + 3."""

    f: int = 0
    selection: str = "scores"

    def __post_init__(self) -> None:
        _check_f(self.f, "BulyanAggregate")
        if self.selection not in ("scores", "iterative"):
            raise StrategyError(f"BulyanAggregate.selection must be 'scores' or 'iterative', got {self.selection!r}")

    def min_updates(self) -> int:
        return 4 * self.f + 3

    def _requirement(self) -> str:
        return f" (Bulyan: n >= 4f + 3 with f={self.f})"

    def select(self, dist: np.ndarray, theta: int) -> np.ndarray:
        if self.selection == "scores":
            return np.argsort(krum_scores(dist, self.f), kind="stable")[:theta]
        remaining = list(range(dist.shape[0]))
        chosen: list[int] = []
        for _ in range(theta):
            sub = dist[np.ix_(remaining, remaining)]
            best = int(np.argmin(krum_scores(sub, self.f)))
            chosen.append(remaining.pop(best))
        return np.asarray(chosen, np.int64)

    def reduce(self, buf: UpdateBuffer, ctx: RoundCtx) -> tuple[np.ndarray, Metrics]:
        n = len(buf)
        theta = n - 2 * self.f
        beta = theta - 2 * self.f
        sel = self.select(buf.pairwise_sq_distances(), theta)
        out = np.empty(buf.dim, np.float64)
        for sl, b in buf.blocks(sel):
            med = np.median(b, axis=0)
            idx = np.argpartition(np.abs(b - med), beta - 1, axis=0)[:beta]
            out[sl] = np.take_along_axis(b, idx, axis=0).mean(axis=0)
        return out, {"selected": theta, "beta": beta}


@dataclass(frozen=True)
class GeometricMedian(_Buffered):
    """Weighted geometric median by the smoothed Weiszfeld algorithm (RFA: Pillutla, Kakade and
    Harchaoui, "Robust Aggregation for Federated Learning", IEEE TSP 2022, arXiv:1912.13445).

    Starts from the weighted mean (weights: `Update.weight`), then repeats
    ``v <- sum_i b_i x_i / sum_i b_i`` with ``b_i = w_i / max(eps, ||v - x_i||)`` for at most
    `max_iter` steps, stopping early once the objective ``sum_i w_i ||v - x_i||`` changes by
    less than ``ftol`` relative (the stopping rule of the RFA numpy reference code, whose
    defaults are maxiter=4, eps=1e-5, ftol=1e-6). Each step is one
    column-blocked pass over the buffer. The authors' TFF code runs a fixed 5 passes (the mean
    + 4 steps) with eps = 1e-6, because each pass is a communication round there; here passes are
    server-side, so the defaults converge further: Weiszfeld converges linearly, and with one
    far outlier the objective is dominated by it, so a loose ``ftol`` stops early."""

    max_iter: int = 100
    eps: float = 1e-6
    ftol: float = 1e-8

    def __post_init__(self) -> None:
        if self.max_iter < 0:
            raise StrategyError(f"GeometricMedian.max_iter must be >= 0, got {self.max_iter}")
        if not self.eps > 0:
            raise StrategyError(f"GeometricMedian.eps (smoothing) must be > 0, got {self.eps}")

    def _pass(self, buf: UpdateBuffer, coef: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """v = coef @ X (coef sums to 1) and each row's distance to v, in one blocked pass."""
        v = np.empty(buf.dim, np.float64)
        sq = np.zeros(len(buf), np.float64)
        for sl, b in buf.blocks():
            vb = coef @ b
            v[sl] = vb
            b -= vb
            sq += np.einsum("ij,ij->i", b, b)
        return v, np.sqrt(sq)

    def reduce(self, buf: UpdateBuffer, ctx: RoundCtx) -> tuple[np.ndarray, Metrics]:
        w = buf.weights
        if w.sum() <= 0:
            raise StrategyError(
                "all replies this round carry weight 0 (num-examples = 0); report the number of "
                "training examples in the reply metrics as 'num-examples'"
            )
        alpha = w / w.sum()
        v, dist = self._pass(buf, alpha)
        obj = float(alpha @ dist)
        it = 0
        while it < self.max_iter:
            b = alpha / np.maximum(self.eps, dist)
            v_new, dist_new = self._pass(buf, b / b.sum())
            obj_new = float(alpha @ dist_new)
            it += 1
            v, dist, converged = v_new, dist_new, abs(obj - obj_new) <= self.ftol * obj_new
            obj = obj_new
            if converged:
                break
        return v, {"weiszfeld-iterations": it, "objective": obj}


# -- named strategies ----------------------------------------------------------------


def FedMedian(memory_budget: int = DEFAULT_MEMORY_BUDGET, **selection: Unpack[Selection]) -> Strategy:
    """Coordinate-wise median, unweighted (Yin et al., "Byzantine-Robust Distributed Learning:
    Towards Optimal Statistical Rates", ICML 2018, arXiv:1803.01498). Selection keywords as
    `FedAvg`; `min_train_nodes` defaults to 2 (Flower's default)."""
    return _compose("FedMedian", SGD(lr=1.0), selection, Median(memory_budget=memory_budget))


def FedTrimmedAvg(
    beta: float = 0.2, memory_budget: int = DEFAULT_MEMORY_BUDGET, **selection: Unpack[Selection]
) -> Strategy:
    """Coordinate-wise trimmed mean, unweighted: cut ``int(beta * n)`` values from each end
    (Yin et al., ICML 2018, arXiv:1803.01498). ``beta`` in [0, 0.5), default 0.2 as Flower."""
    return _compose("FedTrimmedAvg", SGD(lr=1.0), selection, TrimmedMean(beta, memory_budget=memory_budget))


def MultiKrum(
    num_malicious_nodes: int = 0,
    num_nodes_to_select: int = 1,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    **selection: Unpack[Selection],
) -> Strategy:
    """Multi-Krum (Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant
    Gradient Descent", NeurIPS 2017, arXiv:1703.02757): the weighted (num-examples) mean of the
    `num_nodes_to_select` updates with the lowest Krum scores.

    Needs ``2 * num_malicious_nodes + 3`` updates per round; `min_train_nodes` defaults to that."""
    aggregate = KrumSelect(num_malicious_nodes, num_nodes_to_select, memory_budget=memory_budget)
    return _compose("MultiKrum", SGD(lr=1.0), selection, aggregate)


def Krum(
    num_malicious_nodes: int = 0, memory_budget: int = DEFAULT_MEMORY_BUDGET, **selection: Unpack[Selection]
) -> Strategy:
    """Krum (Blanchard et al., NeurIPS 2017, arXiv:1703.02757): the one update whose
    ``n - f - 2`` nearest neighbours are closest. Needs ``2f + 3`` updates per round."""
    return MultiKrum(num_malicious_nodes, 1, memory_budget, **selection)


def Bulyan(
    num_malicious_nodes: int = 0,
    selection: str = "scores",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    **sel: Unpack[Selection],
) -> Strategy:
    """Bulyan (El Mhamdi, Guerraoui and Rouault, "The Hidden Vulnerability of Distributed
    Learning in Byzantium", ICML 2018, arXiv:1802.07927): Krum-select ``n - 2f`` updates, then
    per coordinate average the ``n - 4f`` selected values closest to their median.

    Needs ``4f + 3`` updates per round (a short round fails; Flower skips it). ``selection``:
    ``"scores"`` (Flower 1.42) or ``"iterative"`` (the paper's repeated Krum)."""
    aggregate = BulyanAggregate(num_malicious_nodes, selection, memory_budget=memory_budget)
    return _compose("Bulyan", SGD(lr=1.0), sel, aggregate)


def RFA(
    max_iter: int = 100,
    eps: float = 1e-6,
    ftol: float = 1e-8,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    **selection: Unpack[Selection],
) -> Strategy:
    """Robust Federated Aggregation (Pillutla, Kakade and Harchaoui, IEEE TSP 2022,
    arXiv:1912.13445): the weighted geometric median of the updates by smoothed Weiszfeld.
    (Not in Flower.)"""
    return _compose("RFA", SGD(lr=1.0), selection, GeometricMedian(max_iter, eps, ftol, memory_budget=memory_budget))
