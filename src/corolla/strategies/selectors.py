"""Node selectors: which nodes take part in a round. Seeded by (run seed, purpose, round)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .base import RoundCtx, State, StrategyError


@dataclass(frozen=True)
class Uniform:
    """Sample ``max(min_nodes, ceil(fraction * N))`` nodes uniformly without replacement."""

    fraction: float = 1.0
    min_nodes: int = 2
    purpose: str = "select"

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
        return min(num_nodes, max(self.min_nodes, math.ceil(self.fraction * num_nodes)))

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
            return list(node_ids), state
        idx = ctx.rng(self.purpose).choice(n, size=k, replace=False)
        idx.sort()  # arrival order is the grid's business; keep selection canonical
        return [int(node_ids[int(i)]) for i in idx], state
