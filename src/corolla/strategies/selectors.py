"""Node selectors: which nodes take part in a round. Seeded by (run seed, purpose, round).

A selector is frozen config with explicit state (`Selector`)::

    min_cohort                      # the fewest nodes select() may return (checked against aggregators)
    init() -> state                 # plain data: checkpointed with the strategy
    cohort_size(num_nodes) -> int   # how many nodes a round samples (at most; workflows check it)
    check(num_nodes) -> None        # raise StrategyError (naming the fix) if it can never work
    select(state, nodes, ctx) -> (node ids, state)

`nodes` is a ``Sequence[int]`` (possibly lazy: a million-node simulation passes a `NodeRange`,
never a list). When it is a `corolla.grid.NodeView`, ``properties_of(nodes, i)`` gives what is
known about node i (in simulation its node config: ``partition-id``, ``num-partitions`` and the
properties given with ``run_simulation(node_properties=...)``); otherwise it is ``{}``.

Parts shipped here:

- `Uniform(fraction, min_nodes)`: uniform without replacement (FedAvg's).
- `ProportionalToSize(fraction, min_nodes, key="num-examples")`: without replacement, each draw
  proportional to a node property (e.g. its number of examples).
- `ByProperty(where, then)`: keep the nodes whose properties match, let `then` choose among them.

Randomness comes only from ``ctx.rng(purpose)`` (derived from run seed, purpose and round),
so a run is reproducible and a resumed run samples what the uninterrupted one would have.

Writing a selector
------------------
Any object with the five members above works; keep config in frozen fields and everything
that changes in the state it returns (never in attributes). A cursor that walks the
federation in order, a fixed-size window per round::

    @dataclass(frozen=True)
    class RoundRobin:
        per_round: int = 10
        min_cohort = property(lambda self: self.per_round)
        def init(self): return {"next": 0}
        def cohort_size(self, n): return min(n, self.per_round)
        def check(self, n):
            if n < self.per_round: raise StrategyError(f"RoundRobin needs {self.per_round} nodes; ...")
        def select(self, state, nodes, ctx):
            n, start = len(nodes), state["next"]
            picked = sorted({int(nodes[(start + j) % n]) for j in range(self.cohort_size(n))})
            return picked, {"next": (start + self.cohort_size(n)) % n}

Utility-based selection (Oort, Lai et al. OSDI 2021) fits the same shape: keep a per-node
utility in the state (a dict ``{node_id: utility}`` only for nodes seen so far, so memory
grows with the nodes sampled, not the federation), explore unseen nodes with
``ctx.rng(purpose)`` and exploit the highest utilities. Its utility must come from replies
(loss, duration): a selector that defines ``observe(state, node, metrics, ctx) -> state`` gets
each successful train reply from `Strategy.add`, and the state it returns is checkpointed
with the round.

Cost: `ProportionalToSize` and `ByProperty` read every node's properties each round, which is
O(N) time (about a second per round for a million simulated nodes) but O(1) extra memory for
the view itself (`ByProperty` keeps the matching ids, 8 bytes each).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..grid import properties_of
from .base import RoundCtx, State, StrategyError


@runtime_checkable
class Selector(Protocol):
    """What `Strategy` and the workflows ask of a selector (see the module docstring)."""

    @property
    def min_cohort(self) -> int: ...

    def init(self) -> State: ...

    def cohort_size(self, num_nodes: int) -> int: ...

    def check(self, num_nodes: int) -> None: ...

    def select(self, state: State, nodes: Sequence[int], ctx: RoundCtx) -> tuple[list[int], State]: ...


def _properties_fn(nodes: Sequence[int]) -> Callable[[int], Mapping[str, Any]]:
    """nodes.properties, or a function giving {} for a plain sequence (looked up once, not per node)."""
    fn = getattr(nodes, "properties", None)
    return fn if callable(fn) else (lambda node: {})


def _check_fraction(owner: str, fraction: float, min_nodes: int) -> None:
    if not 0.0 <= fraction <= 1.0:
        raise StrategyError(f"{owner}: fraction must be in [0, 1], got {fraction}")
    if min_nodes < 0:
        raise StrategyError(f"{owner}: min_nodes must be >= 0, got {min_nodes}")


def _cohort_size(fraction: float, min_nodes: int, num_nodes: int) -> int:
    return min(num_nodes, max(min_nodes, math.ceil(fraction * num_nodes)))


@dataclass(frozen=True)
class Uniform:
    """Sample ``max(min_nodes, ceil(fraction * N))`` nodes uniformly without replacement."""

    fraction: float = 1.0
    min_nodes: int = 2
    purpose: str = "select"
    #: trait: how the cohort is drawn (an accountant needs uniform fixed-size or Poisson sampling)
    sampling = "fixed-size"

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise StrategyError(f"fraction must be in [0, 1], got {self.fraction}")
        if self.min_nodes < 0:
            raise StrategyError(f"min_nodes must be >= 0, got {self.min_nodes}")

    @property
    def min_cohort(self) -> int:
        return self.min_nodes

    def init(self) -> State:
        return {}

    def cohort_size(self, num_nodes: int) -> int:
        return _cohort_size(self.fraction, self.min_nodes, num_nodes)

    def check(self, num_nodes: int) -> None:
        if self.min_nodes > num_nodes:
            raise StrategyError(
                f"the strategy needs at least {self.min_nodes} nodes per round but the federation has "
                f"{num_nodes}; lower the minimum (FedAvg: min_train_nodes / min_evaluate_nodes; Uniform: min_nodes) "
                f"to <= {num_nodes}, or add nodes "
                f"(e.g. --nodes {self.min_nodes})"
            )

    def select(self, state: State, node_ids: Sequence[int], ctx: RoundCtx) -> tuple[list[int], State]:
        n = len(node_ids)
        self.check(n)
        k = self.cohort_size(n)
        if k == 0:
            return [], state
        if k == n:
            return [int(i) for i in node_ids], state
        idx = ctx.rng(self.purpose).choice(n, size=k, replace=False)
        idx.sort()  # arrival order is the grid's business; keep selection canonical
        return [int(node_ids[int(i)]) for i in idx], state


@dataclass(frozen=True)
class ProportionalToSize:
    """Sample ``max(min_nodes, ceil(fraction * N))`` nodes without replacement, each draw with
    probability proportional to the node property `key` (default ``num-examples``).

    Successive sampling: the first node is drawn with probability size_i / sum(sizes), the next
    from the remaining nodes alike, and so on (drawn in one pass with exponential keys
    E_i / size_i, Efraimidis & Spirakis 2006). With one node per round the frequencies are
    exactly proportional; with more, larger nodes are still more likely but less than
    proportionally so. Nodes of size 0 are never drawn.

    The sizes come only from node properties (``run_simulation(node_properties=...)``), not
    from earlier replies: a node without the property is an error naming the fix.
    Reads every node's property each round: O(N).
    """

    fraction: float = 1.0
    min_nodes: int = 2
    key: str = "num-examples"
    purpose: str = "select"
    #: trait: not uniform, so no privacy amplification by subsampling
    sampling = "weighted"

    def __post_init__(self) -> None:
        _check_fraction("ProportionalToSize", self.fraction, self.min_nodes)

    @property
    def min_cohort(self) -> int:
        return self.min_nodes

    def init(self) -> State:
        return {}

    def cohort_size(self, num_nodes: int) -> int:
        return _cohort_size(self.fraction, self.min_nodes, num_nodes)

    def check(self, num_nodes: int) -> None:
        if self.min_nodes > num_nodes:
            raise StrategyError(
                f"ProportionalToSize needs at least {self.min_nodes} nodes per round but the federation has "
                f"{num_nodes}; lower min_nodes to <= {num_nodes}, or add nodes (e.g. --nodes {self.min_nodes})"
            )

    def sizes(self, nodes: Sequence[int]) -> np.ndarray:
        """The property `key` of every node, as float64 (raises StrategyError naming the fix)."""
        out = np.empty(len(nodes), np.float64)
        properties = _properties_fn(nodes)
        for j, node in enumerate(nodes):
            props = properties(node)
            if self.key not in props:
                raise StrategyError(
                    f"ProportionalToSize(key={self.key!r}): node {node} has no property {self.key!r}; give every "
                    f"node one (run_simulation(node_properties=...) or [tool.corolla.simulation.node-properties]), "
                    f"or sample with Uniform"
                )
            v = props[self.key]
            try:
                size = float(v)
            except (TypeError, ValueError):
                size = math.nan
            if isinstance(v, bool) or not math.isfinite(size) or size < 0:
                raise StrategyError(
                    f"ProportionalToSize: node {node} has {self.key}={v!r}; sizes must be finite numbers >= 0"
                )
            out[j] = size
        return out

    def select(self, state: State, nodes: Sequence[int], ctx: RoundCtx) -> tuple[list[int], State]:
        n = len(nodes)
        self.check(n)
        k = self.cohort_size(n)
        if k == 0:
            return [], state
        sizes = self.sizes(nodes)
        if k == n:
            return [int(i) for i in nodes], state
        positive = int(np.count_nonzero(sizes))
        if positive < k:
            raise StrategyError(
                f"ProportionalToSize must sample {k} nodes but only {positive} have {self.key} > 0; "
                f"lower fraction/min_nodes or give the nodes sizes"
            )
        keys = ctx.rng(self.purpose).standard_exponential(n)
        with np.errstate(divide="ignore"):
            keys /= sizes  # size 0 -> inf: never among the k smallest
        idx = np.argpartition(keys, k - 1)[:k]
        idx.sort()
        return [int(nodes[int(i)]) for i in idx], state


class _Matching(Sequence[int]):
    """The matching ids of a node view (a compact int64 array); properties from the parent."""

    __slots__ = ("ids", "parent")

    def __init__(self, ids: np.ndarray, parent: Sequence[int]):
        self.ids, self.parent = ids, parent

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return _Matching(self.ids[index], self.parent)
        return int(self.ids[index])

    def __iter__(self) -> Iterator[int]:
        return (int(i) for i in self.ids)

    def properties(self, node_id: int) -> Mapping[str, Any]:
        return properties_of(self.parent, node_id)


@dataclass(frozen=True)
class ByProperty:
    """Keep the nodes whose properties match `where`, then let `then` choose among them.

    `where` is ``{property: value}`` (every listed property must equal the value) or a predicate
    ``properties -> bool``. E.g. ``ByProperty({"gpu": True}, then=Uniform(0.1, 2))``. The state is
    ``{"then": then's state}``. Filtering reads every node's properties each round: O(N) time
    (fine for a million simulated nodes, about a second), and keeps the matching ids (8 bytes each).

    ``cohort_size(N)`` and ``check(N)`` can only judge the whole federation (an upper bound);
    a round whose filter leaves fewer nodes than ``then.min_cohort`` fails with a StrategyError
    naming the filter and the numbers.
    """

    where: Mapping[str, Any] | Callable[[Mapping[str, Any]], bool]
    then: Any = field(default_factory=Uniform)

    def __post_init__(self) -> None:
        if not (isinstance(self.where, Mapping) or callable(self.where)):
            raise StrategyError(
                f"ByProperty(where=...) takes {{property: value}} or a predicate, got {type(self.where).__name__}"
            )
        if isinstance(self.where, Mapping) and not self.where:
            raise StrategyError("ByProperty(where={}) matches every node; name a property, e.g. {'gpu': True}")

    @property
    def min_cohort(self) -> int:
        return self.then.min_cohort

    @property
    def sampling(self) -> str:
        return getattr(self.then, "sampling", "unknown")

    def init(self) -> State:
        return {"then": self.then.init()}

    def cohort_size(self, num_nodes: int) -> int:
        return self.then.cohort_size(num_nodes)

    def check(self, num_nodes: int) -> None:
        self.then.check(num_nodes)

    def matches(self, props: Mapping[str, Any]) -> bool:
        return self._matcher()(props)

    def _matcher(self) -> Callable[[Mapping[str, Any]], bool]:
        if not isinstance(self.where, Mapping):
            where = self.where
            return lambda props: bool(where(props))
        items = tuple(self.where.items())
        missing = object()
        if len(items) == 1:  # the common case, without a generator per node
            ((key, value),) = items
            return lambda props: props.get(key, missing) == value
        return lambda props: all(props.get(k, missing) == v for k, v in items)

    def filter(self, nodes: Sequence[int]) -> Sequence[int]:
        """The matching nodes: a compact view that still knows their properties."""
        properties, match = _properties_fn(nodes), self._matcher()
        ids = np.fromiter((node for node in nodes if match(properties(node))), dtype=np.int64)
        return _Matching(ids, nodes)

    def _describe(self) -> str:
        if isinstance(self.where, Mapping):
            return f"ByProperty(where={dict(self.where)!r})"
        return f"ByProperty(where={getattr(self.where, '__name__', repr(self.where))})"

    def select(self, state: State, nodes: Sequence[int], ctx: RoundCtx) -> tuple[list[int], State]:
        matching = self.filter(nodes)
        need = self.then.min_cohort
        if len(matching) < need:
            hint = (
                ""
                if callable(getattr(nodes, "properties", None))
                else " (this grid gives no node properties: every node has none)"
            )
            raise StrategyError(
                f"{self._describe()} matched {len(matching)} of {len(nodes)} nodes{hint}, but "
                f"{type(self.then).__name__} needs at least {need} per round; loosen the filter, lower "
                f"min_nodes to <= {len(matching)}, or give more nodes the property "
                f"(run_simulation(node_properties=...))"
            )
        picked, then_state = self.then.select(state.get("then", {}), matching, ctx)
        return picked, {**state, "then": then_state}
