"""A strategy is a composition of parts; workflows drive it.

``Strategy(select, aggregate, optimizer, transforms, node_config, select_evaluate,
require_finite, groups)`` is pure policy; all state is explicit and nested by part name:

    state = s.init(arrays)
    nodes, config, state = s.configure_train(state, node_ids, ctx)
    acc = s.open(state, ctx)
    acc = s.add(acc, node, reply_arrays, reply_metrics, ctx)    # each reply, as it arrives
    state, train_metrics, server_metrics = s.close(acc, ctx)    # new arrays in state["params"]

Arrays are split into `groups` by name pattern, each with its own aggregator and server
optimizer (``None`` keeps a group local: not aggregated, never changed on the server).

Named strategies (`FedAvg`, ...) are functions returning a `Strategy`, never subclasses.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..records import Arrays, Config, Metrics
from .aggregators import Mean, MetricsMean
from .base import Hparam, RoundCtx, State, StrategyError, Update, resolve
from .parallel import halves, in_parallel
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
        if finite and v.dtype.kind in "fc" and not _all_finite(v):
            raise InvalidReply(f"reply array {k!r} contains NaN or infinity")


def _all_finite(v: np.ndarray, block: int = 1 << 18) -> bool:
    """`np.isfinite(v).all()` a block at a time: no model-sized temporary, and cache-hot; a
    large array's two halves in two threads (`parallel`)."""
    flat = v.reshape(-1)

    def span(lo: int, hi: int) -> bool:
        return all(bool(np.isfinite(flat[i : min(i + block, hi)]).all()) for i in range(lo, hi, block))

    return all(in_parallel([(span, lo, hi) for lo, hi in halves(flat.size, v.nbytes)]))


@dataclass
class RoundAcc:
    """Per-round accumulator; lives in memory only."""

    state: State
    base: Arrays
    broadcasts: list[Config]
    agg: dict[str, Any]  # per group
    metrics: MetricsMean
    replies: int = 0
    groups: dict[str, list[str]] = field(default_factory=dict)  # aggregated groups -> array names
    local: bool = False  # some groups are kept local
    select_state: Any = None  # the selector's state, updated by `observe` as replies arrive


@dataclass(frozen=True)
class Strategy:
    select: Any = field(default_factory=Uniform)  # Selector
    #: one Aggregator for every group, or {group: Aggregator | None}; None keeps a group local
    #: (neither aggregated nor changed on the server, as FedBN/FedPer need)
    aggregate: Any = field(default_factory=Mean)
    #: one ServerOptimizer for every group, or {group: ServerOptimizer}
    optimizer: Any = field(default_factory=SGD)
    transforms: tuple[Transform, ...] = ()
    #: constants or schedules (round -> value) sent with every train message
    node_config: Mapping[str, Hparam] = field(default_factory=dict)
    #: nodes for federated evaluation; None = no federated evaluation
    select_evaluate: Any = field(default_factory=lambda: Uniform(purpose="select-evaluate"))
    #: reject replies containing NaN/inf
    require_finite: bool = True
    #: array groups: {group: name pattern (fnmatch)}; an array joins the first group it matches.
    #: E.g. SCAFFOLD's {"scaffold": "scaffold/*", "model": "*"}.
    groups: Mapping[str, str] = field(default_factory=lambda: {"model": "*"})

    def __post_init__(self) -> None:
        names = [t.name for t in self.transforms]
        if len(set(names)) != len(names):
            raise StrategyError(f"transform names must be unique (they key the state); got {names}")
        if not self.groups:
            raise StrategyError("groups must name at least one group, e.g. {'model': '*'}")
        aggregators = {g: a for g, a in self._per_group("aggregate").items() if a is not None}
        optimizers = self._per_group("optimizer")
        if not aggregators:
            raise StrategyError("every group is kept local (aggregate None); aggregate at least one group")
        for g in aggregators:
            if optimizers.get(g) is None:
                raise StrategyError(f"group {g!r} is aggregated but has no optimizer; give it one, e.g. SGD(1.0)")
        hiding = [t.name for t in self.transforms if getattr(t, "hides_updates", False)]
        needy = [type(a).__name__ for a in aggregators.values() if getattr(a, "needs_individual_updates", False)]
        if hiding and needy:
            raise StrategyError(
                f"{needy[0]} needs individual updates but {hiding[0]} hides them; "
                f"use Mean with {hiding[0]}, or drop {hiding[0]}"
            )
        if self.select.min_cohort < self.min_replies:
            worst = max(aggregators.values(), key=_min_updates)
            raise StrategyError(
                f"{type(worst).__name__} needs at least {self.min_replies} updates per round but the selector "
                f"may pick only {self.select.min_cohort}; raise min_nodes to >= {self.min_replies}"
            )

    @functools.cached_property
    def _aggregators(self) -> dict[str, Any]:
        return self._per_group("aggregate")

    @functools.cached_property
    def _optimizers(self) -> dict[str, Any]:
        return self._per_group("optimizer")

    def _per_group(self, which: str) -> dict[str, Any]:
        spec = getattr(self, which)
        if not isinstance(spec, Mapping):
            return {g: spec for g in self.groups}
        if set(spec) != set(self.groups):
            raise StrategyError(
                f"{which} names groups {sorted(spec)} but the strategy's groups are {sorted(self.groups)}; "
                f"give one part per group (None in aggregate keeps a group local)"
            )
        return dict(spec)

    def group_names(self, arrays: Arrays) -> dict[str, list[str]]:
        """{group: array names}, by the first matching pattern; an array matching none is an error."""
        out: dict[str, list[str]] = {g: [] for g in self.groups}
        for name in arrays:
            for g, pattern in self.groups.items():
                if fnmatch.fnmatchcase(name, pattern):
                    out[g].append(name)
                    break
            else:
                raise StrategyError(
                    f"array {name!r} matches no group pattern {dict(self.groups)}; add a catch-all such as 'model': '*'"
                )
        return out

    # -- checks ---------------------------------------------------------------
    def validate(self, num_nodes: int) -> None:
        """Called by workflows before round 1: fail now, not after an endless wait."""
        self.select.check(num_nodes)
        if self.select_evaluate is not None:
            self.select_evaluate.check(num_nodes)

    @property
    def min_replies(self) -> int:
        return max([1, *(_min_updates(a) for a in self._aggregators.values() if a is not None)])

    # -- state ------------------------------------------------------------------
    def init(self, arrays: Arrays) -> State:
        groups = self.group_names(arrays)
        aggs, opts = self._aggregators, self._optimizers
        shared = [n for g, names in groups.items() if aggs[g] is not None for n in names]
        return {
            "params": arrays,
            "select": self.select.init(),
            "aggregate": {g: aggs[g].init(_subset(arrays, n)) for g, n in groups.items() if aggs[g] is not None},
            "optimizer": {g: opts[g].init(_subset(arrays, n)) for g, n in groups.items() if aggs[g] is not None},
            # transforms see only aggregated arrays (see `add`), so their state covers only those
            "transforms": {t.name: t.init(_subset(arrays, shared)) for t in self.transforms},
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
        aggs = self._aggregators
        groups = {g: n for g, n in self.group_names(state["params"]).items() if aggs[g] is not None}
        accs = {g: aggs[g].open(state["aggregate"][g], ctx) for g in groups}
        local = any(a is None for a in aggs.values())
        return RoundAcc(
            state,
            state["params"],
            broadcasts,
            accs,
            MetricsMean(),
            groups=groups,
            local=local,
            select_state=state["select"],
        )

    def add(self, acc: RoundAcc, node: int, arrays: Arrays, metrics: Metrics, ctx: RoundCtx) -> RoundAcc:
        """Check one reply against the global arrays, transform it and fold it in.

        Raises `InvalidReply` (the workflow records it as that node's failure)."""
        check_reply_arrays(arrays, acc.base, finite=self.require_finite)
        weight = metrics.get("num-examples", 1)
        if not isinstance(weight, (int, float)) or not np.isfinite(weight) or weight < 0:
            raise InvalidReply(f"'num-examples' must be a finite number >= 0, got {weight!r}")
        u = Update(node=node, arrays=arrays, base=acc.base, weight=float(weight), metrics=metrics)
        if acc.local:  # transforms see only what is aggregated, not arrays a node keeps to itself
            u = _group_update(u, [n for names in acc.groups.values() for n in names])
        for t, bc in zip(self.transforms, acc.broadcasts):
            u = t.per_update(bc, u, ctx)
        aggs = self._aggregators
        for g, names in acc.groups.items():
            part = u if len(names) == len(acc.base) else _group_update(u, names)
            acc.agg[g] = aggs[g].add(acc.agg[g], part)
        acc.metrics.add(metrics, float(weight))  # metrics: weighted by num-examples, whatever transforms did
        observe = getattr(self.select, "observe", None)
        if observe is not None:  # feedback for selectors that learn (utility-based, Oort-like)
            acc.select_state = observe(acc.select_state, node, metrics, ctx)
        acc.replies += 1
        return acc

    def close(self, acc: RoundAcc, ctx: RoundCtx) -> tuple[State, Metrics, Metrics]:
        """-> (new state, aggregated train metrics, server metrics)."""
        state = acc.state
        aggs, opts = self._aggregators, self._optimizers
        plain = self._plain_steps(acc, ctx)
        update, agg_states, server_metrics = Arrays(), {}, {}
        params, opt_states = Arrays(state["params"]), {}
        for g in acc.groups:
            if g in plain:  # the aggregator writes params + update itself: one pass fewer
                new, agg_states[g], m = aggs[g].result_params(acc.agg[g], state["aggregate"][g], ctx)
                params.update(new)
            else:
                u, agg_states[g], m = aggs[g].result(acc.agg[g], state["aggregate"][g], ctx)
                update.update(u)
            server_metrics.update(_prefixed(g, m, len(acc.groups)))
        tstates = dict(state["transforms"])
        for t in reversed(self.transforms):
            update, tstates[t.name], m = t.on_aggregate(tstates[t.name], update, ctx)
            server_metrics.update({f"{t.name}/{k}": v for k, v in m.items()})
        for g, names in acc.groups.items():
            if g in plain:
                opt_states[g], m = plain[g]
            else:
                new, opt_states[g], m = opts[g].step(
                    state["optimizer"][g], _subset(state["params"], names), _subset(update, names), ctx
                )
                params.update(new)
            server_metrics.update(_prefixed(g, m, len(acc.groups)))
        new_state = {
            **state,
            "params": params,
            "select": acc.select_state,
            "aggregate": agg_states,
            "optimizer": opt_states,
            "transforms": tstates,
        }
        return new_state, acc.metrics.result(), server_metrics

    def _plain_steps(self, acc: RoundAcc, ctx: RoundCtx) -> dict[str, tuple[State, Metrics]]:
        """{group: the optimizer's (state, metrics)} for the groups whose step this round only
        adds the aggregate (FedAvg's ``SGD(1)``, `plain_step`) and whose aggregator can write
        ``base + aggregate`` itself (`result_params`), with nothing between the two (no
        transforms) and only floating arrays: the new arrays then take one pass over the model
        instead of two. Same values as the two passes up to the last bit (one rounding fewer)."""
        if self.transforms:
            return {}
        out = {}
        for g, names in acc.groups.items():
            agg, opt = self._aggregators[g], self._optimizers[g]
            if not (hasattr(agg, "result_params") and hasattr(opt, "plain_step")):
                continue
            if all(acc.base[n].dtype.kind == "f" for n in names):
                step = opt.plain_step(acc.state["optimizer"][g], ctx)
                if step is not None:
                    out[g] = step
        return out


def _min_updates(aggregator: Any) -> int:
    return int(getattr(aggregator, "min_updates", lambda: 1)())


def _subset(arrays: Arrays, names: list[str]) -> Arrays:
    return arrays if len(names) == len(arrays) else Arrays((n, arrays[n]) for n in names)


def _group_update(u: Update, names: list[str]) -> Update:
    return replace(u, arrays=_subset(u.arrays, names), base=_subset(u.base, names))


def _prefixed(group: str, metrics: Metrics, num_groups: int) -> Metrics:
    """Metrics of a group's parts; prefixed by the group only when there are several."""
    return dict(metrics) if num_groups == 1 else {f"{group}/{k}": v for k, v in metrics.items()}
