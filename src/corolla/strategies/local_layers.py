"""Partial aggregation: some arrays stay on the nodes (FedBN, FedPer).

Server side, `with_local(strategy, local)` puts the arrays whose names match `local` (an
fnmatch pattern, or a tuple of them) in groups that are neither aggregated nor changed on
the server: ``groups={"local": pattern, "model": "*"}``, ``aggregate={"local": None, ...}``.
The global copies of those arrays keep their initial values; nodes still receive and return
them (replies must match the global arrays), but the server ignores what comes back.

Node side, two PyTorch-free helpers keep each node's own copies in ``ctx.state`` (plain
numpy arrays, so they are checkpointed with the run)::

    @app.train
    def train(msg, ctx):
        arrays = restore_local(ctx, msg.content.arrays, "*bn*")   # the node's own bn arrays
        new = fit(arrays, ...)
        save_local(ctx, new, "*bn*")                              # keep them for next round
        return msg.reply(arrays=new, metrics={"num-examples": n})

Use the same helper in ``evaluate`` (restore only) so a node evaluates with its own layers.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Union

import numpy as np

from ..records import Arrays
from .base import StrategyError
from .named import FedAvg
from .strategy import Strategy

#: one fnmatch pattern or several (an array is local if it matches any)
Patterns = Union[str, tuple[str, ...], list[str]]

#: the `ctx.state` key under which the helpers keep a node's local arrays
STATE_KEY = "local-arrays"


def _patterns(local: Patterns) -> tuple[str, ...]:
    pats = (local,) if isinstance(local, str) else tuple(local)
    if not pats or not all(isinstance(p, str) and p for p in pats):
        raise StrategyError(f"local must be an fnmatch pattern or a tuple of them, e.g. '*bn*'; got {local!r}")
    return pats


def is_local(name: str, local: Patterns) -> bool:
    """Whether array `name` matches one of the patterns (case-sensitive fnmatch)."""
    return any(fnmatch.fnmatchcase(name, p) for p in _patterns(local))


def with_local(strategy: Strategy, local: Patterns) -> Strategy:
    """`strategy`, with the arrays matching `local` kept on the nodes.

    One group per pattern (``local``, or ``local-0``, ``local-1``... for a tuple), placed before
    the strategy's own groups so they take precedence; each has ``aggregate=None`` and
    ``optimizer=None``. The strategy's aggregators and optimizers apply to the rest.
    """
    pats = _patterns(local)
    names = ["local"] if len(pats) == 1 else [f"local-{i}" for i in range(len(pats))]
    clash = [g for g in names if g in strategy.groups]
    if clash:
        raise StrategyError(f"the strategy already has group(s) {clash}; rename them to keep arrays local")

    def per_group(spec: Any) -> dict[str, Any]:
        rest = dict(spec) if isinstance(spec, Mapping) else {g: spec for g in strategy.groups}
        return {**{g: None for g in names}, **rest}

    return replace(
        strategy,
        groups={**dict(zip(names, pats)), **strategy.groups},
        aggregate=per_group(strategy.aggregate),
        optimizer=per_group(strategy.optimizer),
    )


def FedBN(local: Patterns = "*bn*", **fedavg: Any) -> Strategy:
    """FedBN (Li et al., ICLR 2021): FedAvg that leaves batch-norm arrays on the nodes.

    `local` matches the batch-norm arrays by name (fnmatch; a tuple for several patterns, e.g.
    ``("*bn*", "*.running_*")``); other arguments go to `FedAvg`. Pair with `restore_local` /
    `save_local` on the nodes.
    """
    return with_local(FedAvg(**fedavg), local)


def FedPer(local: Patterns = "head.*", **fedavg: Any) -> Strategy:
    """FedPer (Arivazhagan et al., 2019): FedAvg of the base layers; each node keeps its own head.

    `local` matches the personalised layers by name (default ``head.*``); other arguments go
    to `FedAvg`. Pair with `restore_local` / `save_local` on the nodes.
    """
    return with_local(FedAvg(**fedavg), local)


# -- node side ----------------------------------------------------------------------------------


def restore_local(ctx: Any, arrays: Arrays, local: Patterns, key: str = STATE_KEY) -> Arrays:
    """The received `arrays`, with those matching `local` replaced by the node's own copies.

    Before training (and evaluating). The node's copies come from ``ctx.state[key]``; in the
    node's first round there are none and the received arrays are kept. Returns a new `Arrays`
    (the received one is not modified); restored arrays are fresh copies, free to modify.
    """
    saved = ctx.state.get(key) or {}
    out = Arrays()
    for name, value in arrays.items():
        mine = saved.get(name) if is_local(name, local) else None
        if mine is None:
            out[name] = value
            continue
        mine = np.asarray(mine)
        if mine.shape != value.shape or mine.dtype != value.dtype:
            raise ValueError(
                f"node {getattr(ctx, 'node_id', '?')} kept local array {name!r} as {mine.dtype}{list(mine.shape)} "
                f"but received {value.dtype}{list(value.shape)}; the model changed: clear ctx.state[{key!r}]"
            )
        out[name] = mine.copy()
    return out


def save_local(ctx: Any, arrays: Arrays, local: Patterns, key: str = STATE_KEY) -> None:
    """Keep copies of the arrays matching `local` in ``ctx.state[key]`` (after training).

    Plain numpy arrays in a dict, so the state is checkpointed with the run.
    """
    ctx.state[key] = {name: np.array(v, copy=True) for name, v in arrays.items() if is_local(name, local)}
