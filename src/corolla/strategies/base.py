"""The shapes every strategy part shares: one node's `Update`, the round's `RoundCtx`, and `State`.

Parts are frozen config. `init` returns their state, every call threads state in and out,
so a strategy's whole state is plain data (nested dicts of arrays and numbers) that the store
checkpoints after each round.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import numpy as np

from .. import seeding
from ..records import Arrays, Metrics

State = dict[str, Any]


@dataclass(frozen=True)
class Update:
    """One node's contribution as parts see it. Never mutated: transforms return new ones."""

    node: int
    arrays: Arrays  # what the node returned (its new arrays)
    base: Arrays  # the global arrays it trained from
    weight: float  # default: num-examples; transforms may change it
    metrics: Metrics = field(default_factory=dict)
    side: Mapping[str, Any] = field(default_factory=dict)  # extra statistics summed alongside

    def delta(self) -> Arrays:
        """arrays - base: the node's model update."""
        return Arrays((k, np.subtract(v, self.base[k])) for k, v in self.arrays.items())


@dataclass(frozen=True)
class RoundCtx:
    """What a part may know about "now"."""

    round: int
    seed: int
    num_nodes: int  # size of the federation
    cohort: int = 0  # nodes asked in this stage, when an accumulator is opened (0: not known)

    def rng(self, purpose: str, node: int = 0) -> np.random.Generator:
        return seeding.rng(self.seed, purpose, self.round, node)


#: a hyper-parameter: a constant or a schedule of the round
Hparam = Union[float, int, str, bool, Callable[[int], Any]]


def resolve(value: Hparam, round: int) -> Any:
    return value(round) if callable(value) else value


class StrategyError(ValueError):
    """A composition or configuration that cannot work; the message names the fix."""
