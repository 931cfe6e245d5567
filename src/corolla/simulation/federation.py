"""A federation of virtual nodes that exist only when used.

Node ids are partition indices, so a node's data share follows from its id. Only nodes that
hold `Context.state` cost memory (in `NodeStates`), so a million-node federation is cheap.

Nodes may have properties (``{"gpu": True, "num-examples": 512}``): `node_properties` is a
function ``node_id -> dict`` (or a table, see `properties_from_table`), evaluated on demand.
They join the node's `Context.node_config` and are what selectors see through
`grid.node_ids().properties(node_id)` (a lazy `NodeRange`, O(1) memory for any size).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from ..client.app import ClientApp
from ..client.context import Context
from ..grid import NodeRange
from ..records import Config

#: node_id -> properties, or a table {property: value | list of values cycled by node id}
NodeProperties = Union[Callable[[int], Mapping[str, Any]], Mapping[str, Any]]


@dataclass
class Federation:
    num_nodes: int
    run_id: str = ""
    seed: int = 0
    run_config: Config = field(default_factory=dict)
    #: extra node config for every node (merged under partition-id / num-partitions)
    node_config: Config = field(default_factory=dict)
    #: per-node properties: node_id -> dict (merged over `node_config`, under partition-id /
    #: num-partitions), or a table {property: value or list cycled by node id}
    node_properties: NodeProperties | None = None

    def __post_init__(self) -> None:
        if self.num_nodes < 1:
            raise ValueError(f"a federation needs at least 1 node, got {self.num_nodes}")
        if isinstance(self.node_properties, Mapping):
            self.node_properties = properties_from_table(self.node_properties)
        elif self.node_properties is not None and not callable(self.node_properties):
            raise TypeError(
                f"node_properties must be a function node_id -> dict or a table {{property: list}}, "
                f"got {type(self.node_properties).__name__}"
            )

    def node_ids(self) -> NodeRange:
        """All node ids, lazily; ``.properties(i)`` is node i's node config."""
        return NodeRange(range(self.num_nodes), self.node_config_for)

    def node_config_for(self, node_id: int) -> Config:
        extra: Mapping[str, Any] = {}
        if self.node_properties is not None:
            extra = self.node_properties(node_id)
            if not isinstance(extra, Mapping):
                raise TypeError(f"node_properties({node_id}) returned {type(extra).__name__}; return a dict")
        return {**self.node_config, **extra, "partition-id": node_id, "num-partitions": self.num_nodes}

    def context(self, node_id: int, round: int, state: dict[str, Any]) -> Context:
        return Context(
            node_id=node_id,
            node_config=self.node_config_for(node_id),
            run_config=self.run_config,
            state=state,
            run_id=self.run_id,
            seed=self.seed,
            round=round,
        )


def properties_from_table(table: Mapping[str, Any]) -> Callable[[int], dict[str, Any]]:
    """``{"gpu": [True, False], "tier": "edge"}`` -> node_id -> ``{"gpu": ..., "tier": "edge"}``.

    A list gives node i the value ``values[i % len(values)]`` (a list as long as the federation
    lists every node; a shorter one repeats as a pattern); any other value applies to every
    node. This is the form of ``[tool.corolla.simulation.node-properties]`` in a project.
    """
    if not isinstance(table, Mapping):
        raise TypeError(f"node properties table must be a mapping, got {type(table).__name__}")
    fixed: dict[str, Any] = {}
    cycled: dict[str, tuple] = {}
    for key, value in table.items():
        if not isinstance(key, str):
            raise TypeError(f"node property names must be str, got {key!r}")
        if isinstance(value, (list, tuple)):
            if not value:
                raise ValueError(f"node property {key!r} has an empty list; give at least one value")
            cycled[key] = tuple(value)
        else:
            fixed[key] = value

    def properties(node_id: int) -> dict[str, Any]:
        return {**fixed, **{k: v[node_id % len(v)] for k, v in cycled.items()}}

    return properties


class NodeStates:
    """Per-node persistent state, kept by the runtime (not by workers) and checkpointed."""

    def __init__(self, states: dict[int, dict[str, Any]] | None = None):
        self._states: dict[int, dict[str, Any]] = dict(states or {})

    def get(self, node_id: int) -> dict[str, Any]:
        return self._states.get(node_id, {})

    def put(self, node_id: int, state: dict[str, Any]) -> None:
        if state:
            self._states[node_id] = state
        else:
            self._states.pop(node_id, None)

    def snapshot(self) -> dict[int, dict[str, Any]]:
        return dict(self._states)

    def __len__(self) -> int:
        return len(self._states)


AppLoader = Callable[[], ClientApp]
