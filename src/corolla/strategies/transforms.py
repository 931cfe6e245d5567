"""Update transforms: per-update halves (clip, weight caps) and aggregate halves (noise).

A transform is frozen config with explicit state::

    init(spec) -> state
    broadcast(state, ctx) -> Config                # sent to nodes (e.g. the current clip norm)
    per_update(broadcast, update, ctx) -> Update   # pure; same code on a node or the server
    on_aggregate(state, aggregate, ctx) -> (aggregate, state, metrics)

`Strategy` runs the per-update halves in order and the aggregate halves in reverse (an onion),
so a clip and the noise it bounds nest correctly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

from ..records import Arrays, Config, Metrics
from .base import Hparam, RoundCtx, State, StrategyError, Update, resolve


@runtime_checkable
class Transform(Protocol):
    name: str

    def init(self, spec: Arrays) -> State: ...

    def broadcast(self, state: State, ctx: RoundCtx) -> Config: ...

    def per_update(self, broadcast: Config, u: Update, ctx: RoundCtx) -> Update: ...

    def on_aggregate(self, state: State, aggregate: Arrays, ctx: RoundCtx) -> tuple[Arrays, State, Metrics]: ...


@dataclass(frozen=True)
class WeightCap:
    """Cap each node's weight (num-examples) so no single node dominates the mean."""

    max_weight: Hparam
    name: str = "weight_cap"

    def __post_init__(self) -> None:
        if not callable(self.max_weight) and float(self.max_weight) <= 0:
            raise StrategyError(f"WeightCap.max_weight must be > 0, got {self.max_weight}")

    def init(self, spec: Arrays) -> State:
        return {}

    def broadcast(self, state: State, ctx: RoundCtx) -> Config:
        return {}

    def per_update(self, broadcast: Config, u: Update, ctx: RoundCtx) -> Update:
        cap = float(resolve(self.max_weight, ctx.round))
        return u if u.weight <= cap else replace(u, weight=cap)

    def on_aggregate(self, state: State, aggregate: Arrays, ctx: RoundCtx) -> tuple[Arrays, State, Metrics]:
        return aggregate, state, {}
