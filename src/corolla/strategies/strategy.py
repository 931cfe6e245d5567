"""A strategy is a composition of parts; workflows drive it.

``Strategy(select, aggregate, optimizer, transforms, node_config)`` is pure policy:

    state = s.init(arrays, ctx)                       # all state, nested by part name
    nodes, config, state = s.configure_train(state, node_ids, ctx)
    acc = s.open(state, ctx); acc = s.add(acc, reply) ...   # fold replies as they arrive
    arrays, state, metrics = s.close(state, acc, ctx)

Named strategies (`FedAvg`, ...) are functions returning a `Strategy`, never subclasses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..records import Arrays, Config, Metrics
from .aggregators import Mean, MetricsMean
from .base import Hparam, RoundCtx, State, StrategyError, Update, resolve
from .selectors import Uniform
from .server_optimizers import SGD
from .transforms import Transform


class InvalidReply(ValueError):
    """A reply that does not match what the strategy expects; rejected before any part sees it."""


def check_reply_arrays(arrays: Arrays, expected: Arrays, *, finite: bool = False) -> None:
    """Names, dtypes and shapes must match the global arrays exactly."""
    if list(arrays.keys()) != list(expected.keys()):
        missing = [k for k in expected if k not in arrays]
        extra = [k for k in arrays if k not in expected]
        raise InvalidReply(
            f"reply arrays do not match the global arrays (missing: {missing or 'none'}, "
            f"unexpected: {extra or 'none'}); return arrays with the same names, in the same order, as received"
        )
    for k, v in arrays.items():
        e = expected[k]
        if v.dtype != e.dtype or v.shape != e.shape:
            fix = f" (e.g. `.astype(np.{e.dtype.name})`)" if v.dtype != e.dtype else ""
            raise InvalidReply(
                f"reply array {k!r} is {v.dtype}{list(v.shape)} but the global array is "
                f"{e.dtype}{list(e.shape)}; return it with the same dtype and shape{fix}"
            )
        if finite and v.dtype.kind in "fc" and not np.isfinite(v).all():
            raise InvalidReply(f"reply array {k!r} contains NaN or infinity")


@dataclass
class RoundAcc:
    """Per-round accumulator; lives in memory only."""

    state: State
    base: Arrays
    broadcasts: list[Config]
    agg: Any
    metrics: MetricsMean
    replies: int = 0


@dataclass(frozen=True)
class Strategy:
    select: Any = field(default_factory=Uniform)  # Selector
    aggregate: Any = field(default_factory=Mean)  # Aggregator
    optimizer: Any = field(default_factory=SGD)  # ServerOptimizer
    transforms: tuple[Transform, ...] = ()
    #: constants or schedules (round -> value) sent with every train message
    node_config: Mapping[str, Hparam] = field(default_factory=dict)
    #: nodes for federated evaluation; None = no federated evaluation
    select_evaluate: Any = field(default_factory=lambda: Uniform(purpose="select-evaluate"))
    #: reject replies containing NaN/inf
    require_finite: bool = True

    def __post_init__(self) -> None:
        names = [t.name for t in self.transforms]
        if len(set(names)) != len(names):
            raise StrategyError(f"transform names must be unique (they key the state); got {names}")
        min_up = getattr(self.aggregate, "min_updates", lambda: 1)()
        if self.select.min_cohort < min_up:
            raise StrategyError(
                f"{type(self.aggregate).__name__} needs at least {min_up} updates per round but the selector "
                f"may pick only {self.select.min_cohort}; raise min_nodes to >= {min_up}"
            )

    # -- checks ---------------------------------------------------------------
    def validate(self, num_nodes: int) -> None:
        """Called by workflows before round 1: fail now, not after an endless wait."""
        self.select.check(num_nodes)
        if self.select_evaluate is not None:
            self.select_evaluate.check(num_nodes)

    @property
    def min_replies(self) -> int:
        return max(1, getattr(self.aggregate, "min_updates", lambda: 1)())

    # -- state ------------------------------------------------------------------
    def init(self, arrays: Arrays) -> State:
        return {
            "params": arrays,
            "select": self.select.init(),
            "aggregate": self.aggregate.init(arrays),
            "optimizer": self.optimizer.init(arrays),
            "transforms": {t.name: t.init(arrays) for t in self.transforms},
        }

    # -- round ------------------------------------------------------------------
    def configure_train(self, state: State, node_ids: Sequence[int], ctx: RoundCtx) -> tuple[list[int], Config, State]:
        nodes, sel_state = self.select.select(state["select"], node_ids, ctx)
        config: Config = {k: resolve(v, ctx.round) for k, v in self.node_config.items()}
        for t in self.transforms:
            config.update(t.broadcast(state["transforms"][t.name], ctx))
        return nodes, config, {**state, "select": sel_state}

    def configure_evaluate(self, state: State, node_ids: Sequence[int], ctx: RoundCtx) -> list[int]:
        if self.select_evaluate is None:
            return []
        nodes, _ = self.select_evaluate.select({}, node_ids, ctx)
        return nodes

    def open(self, state: State, ctx: RoundCtx) -> RoundAcc:
        broadcasts = [t.broadcast(state["transforms"][t.name], ctx) for t in self.transforms]
        return RoundAcc(state, state["params"], broadcasts, self.aggregate.open(state["aggregate"], ctx), MetricsMean())

    def add(self, acc: RoundAcc, node: int, arrays: Arrays, metrics: Metrics, ctx: RoundCtx) -> RoundAcc:
        """Check one reply against the global arrays, transform it and fold it in.

        Raises `InvalidReply` (the workflow records it as that node's failure)."""
        check_reply_arrays(arrays, acc.base, finite=self.require_finite)
        weight = metrics.get("num-examples", 1)
        if not isinstance(weight, (int, float)) or not np.isfinite(weight) or weight < 0:
            raise InvalidReply(f"'num-examples' must be a finite number >= 0, got {weight!r}")
        u = Update(node=node, arrays=arrays, base=acc.base, weight=float(weight), metrics=metrics)
        for t, bc in zip(self.transforms, acc.broadcasts):
            u = t.per_update(bc, u, ctx)
        acc.agg = self.aggregate.add(acc.agg, u)
        acc.metrics.add(metrics, u.weight)
        acc.replies += 1
        return acc

    def close(self, acc: RoundAcc, ctx: RoundCtx) -> tuple[State, Metrics, Metrics]:
        """-> (new state, aggregated train metrics, server metrics)."""
        state = acc.state
        update, agg_state, server_metrics = self.aggregate.result(acc.agg, state["aggregate"], ctx)
        server_metrics = dict(server_metrics)
        tstates = dict(state["transforms"])
        for t in reversed(self.transforms):
            update, tstates[t.name], m = t.on_aggregate(tstates[t.name], update, ctx)
            server_metrics.update({f"{t.name}/{k}": v for k, v in m.items()})
        params, opt_state, m = self.optimizer.step(state["optimizer"], state["params"], update, ctx)
        server_metrics.update(m)
        new_state = {**state, "params": params, "aggregate": agg_state, "optimizer": opt_state, "transforms": tstates}
        return new_state, acc.metrics.result(), server_metrics
