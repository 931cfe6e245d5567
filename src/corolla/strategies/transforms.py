"""Update transforms: per-update halves (clip, weight caps) and aggregate halves (noise).

A transform is frozen config with explicit state::

    init(spec) -> state
    broadcast(state, ctx) -> Config                # sent to nodes (e.g. the current clip norm)
    per_update(broadcast, update, ctx) -> Update   # pure; same code on a node or the server
    on_aggregate(state, aggregate, ctx) -> (aggregate, state, metrics)

`Strategy` runs the per-update halves in order and the aggregate halves in reverse (an onion),
so a clip and the noise it bounds nest correctly.

Traits (class attributes; `Strategy` checks ``hides_updates`` against aggregators that need
individual updates; the others are declared for the privacy checks still to come):

- ``hides_updates``: the server no longer sees individual updates (secure aggregation).
- ``bounds_norm``: the L2 bound C every update's delta has after this transform, or None.
- ``placement``: ``"server"`` (runs in `Strategy.add`) or ``"node"`` (the node applies it to
  its own update with the same pure function; the server checks the result).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import numpy as np

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
    #: traits
    hides_updates = False
    bounds_norm = None
    placement = "server"

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


def delta_norm(arrays: Arrays, base: Arrays) -> float:
    """L2 norm of arrays - base over all floating-point arrays (float64 accumulation)."""
    total = 0.0
    for k, v in arrays.items():
        if v.dtype.kind not in "fc":
            continue
        d = np.subtract(v, base[k], dtype=np.complex128 if v.dtype.kind == "c" else np.float64)
        total += float(np.vdot(d, d).real)
    return math.sqrt(total)


def clip_by_norm(arrays: Arrays, base: Arrays, max_norm: float) -> tuple[Arrays, bool, float]:
    """-> (base + delta * min(1, max_norm / ||delta||), clipped?, ||delta||) for delta = arrays - base.

    The norm spans every floating-point array; integer and bool arrays (counters such as
    BatchNorm's ``num_batches_tracked``) are left unchanged and not counted. Pure: the same code
    clips on a node (`ClipNorm(placement="node")`) or on the server. Results keep each array's dtype.
    """
    norm = delta_norm(arrays, base)
    if norm <= max_norm:
        return arrays, False, norm
    scale = max_norm / norm
    out = Arrays()
    for k, v in arrays.items():
        if v.dtype.kind not in "fc":
            out[k] = v
            continue
        b = base[k]
        wide = np.complex128 if v.dtype.kind == "c" else np.float64
        d = np.subtract(v, b, dtype=wide)
        d *= scale
        d += b
        out[k] = d.astype(v.dtype, copy=False)
    return out, True, norm


@dataclass(frozen=True)
class ClipNorm:
    """Clip each update's delta (arrays - base, all arrays together) to L2 norm `max_norm`.

    Returns a new `Update` whose arrays are ``base + delta * min(1, max_norm / ||delta||)`` and
    records the side statistic ``clipped`` (1.0 or 0.0), which `Mean` sums (weighted) and reports
    as ``side/clipped``. `max_norm` is a constant or a schedule of the round.

    ``placement="server"`` clips in `Strategy.add`. ``placement="node"`` broadcasts
    ``{"clip-norm": C}``; the node clips its own update with `clip_by_norm` (and may report
    ``clipped`` in its metrics), and the server only checks ``||delta|| <= C * (1 + 1e-6)``,
    rejecting violators as invalid replies.

    The norm spans the arrays the strategy aggregates (groups kept local are left out).
    """

    max_norm: Hparam
    placement: str = "server"
    name: str = "clip"
    #: traits
    hides_updates = False

    def __post_init__(self) -> None:
        if self.placement not in ("server", "node"):
            raise StrategyError(f"ClipNorm.placement must be 'server' or 'node', got {self.placement!r}")
        if not callable(self.max_norm):
            c = float(self.max_norm)
            if not (math.isfinite(c) and c > 0):
                raise StrategyError(f"ClipNorm.max_norm must be a finite number > 0, got {self.max_norm}")

    @property
    def bounds_norm(self) -> float | None:
        """Trait: the L2 bound C (None for a schedule: see `norm_at`)."""
        return None if callable(self.max_norm) else float(self.max_norm)

    def norm_at(self, round: int) -> float:
        c = float(resolve(self.max_norm, round))
        if not (math.isfinite(c) and c > 0):
            raise StrategyError(f"ClipNorm.max_norm({round}) = {c}; a clip norm must be a finite number > 0")
        return c

    def init(self, spec: Arrays) -> State:
        return {}

    def broadcast(self, state: State, ctx: RoundCtx) -> Config:
        return {"clip-norm": self.norm_at(ctx.round)} if self.placement == "node" else {}

    def per_update(self, broadcast: Config, u: Update, ctx: RoundCtx) -> Update:
        c = float(broadcast.get("clip-norm", 0.0)) or self.norm_at(ctx.round)
        if self.placement == "node":
            norm = delta_norm(u.arrays, u.base)
            if norm > c * (1 + 1e-6):
                from .strategy import InvalidReply  # strategy.py imports this module

                raise InvalidReply(
                    f"node {u.node} sent an update of norm {norm:.6g} but ClipNorm(placement='node') bounds it at "
                    f"{c:.6g}; clip on the node with corolla.strategies.transforms.clip_by_norm(arrays, base, "
                    f"config['clip-norm'])"
                )
            clipped = float(u.metrics.get("clipped", 0.0))
            return replace(u, side={**u.side, "clipped": clipped})
        arrays, clipped, _ = clip_by_norm(u.arrays, u.base, c)
        return replace(u, arrays=arrays, side={**u.side, "clipped": 1.0 if clipped else 0.0})

    def on_aggregate(self, state: State, aggregate: Arrays, ctx: RoundCtx) -> tuple[Arrays, State, Metrics]:
        return aggregate, state, {}
