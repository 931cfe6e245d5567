"""What a node's handler knows about where it runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import seeding
from ..records import Config


@dataclass
class Context:
    node_id: int
    #: what the data owner configured on this node; in simulation ``partition-id`` and
    #: ``num-partitions`` so the app can load its own share of the data
    node_config: Config = field(default_factory=dict)
    #: the run's config (project defaults overridden by ``-c key=value``)
    run_config: Config = field(default_factory=dict)
    #: persistent per-node state: survives across rounds and is checkpointed with the run.
    #: Keep it plain (numbers, strings, numpy arrays, lists and dicts of them).
    state: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""
    seed: int = 0
    round: int = 0

    def rng(self, purpose: str = "client") -> np.random.Generator:
        """A generator derived from (run seed, purpose, round, node): reproducible, never global."""
        return seeding.rng(self.seed, purpose, self.round, self.node_id)

    def seed_for(self, purpose: str = "client") -> int:
        """An integer seed for frameworks that want one (``torch.manual_seed``, sklearn)."""
        return seeding.derive_int(self.seed, purpose, self.round, self.node_id)

    @property
    def partition_id(self) -> int:
        return int(self.node_config.get("partition-id", self.node_id))

    @property
    def num_partitions(self) -> int:
        return int(self.node_config.get("num-partitions", 1))
