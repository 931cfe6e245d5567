"""A federation of virtual nodes that exist only when used.

Node ids are partition indices, so a node's data share follows from its id. Only nodes that
hold `Context.state` cost memory (in `NodeStates`), so a million-node federation is cheap.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..client.app import ClientApp
from ..client.context import Context
from ..message import Message
from ..records import Config


@dataclass
class Federation:
    num_nodes: int
    run_id: str = ""
    seed: int = 0
    run_config: Config = field(default_factory=dict)
    #: extra node config for every node (merged under partition-id / num-partitions)
    node_config: Config = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_nodes < 1:
            raise ValueError(f"a federation needs at least 1 node, got {self.num_nodes}")

    def node_ids(self) -> range:
        return range(self.num_nodes)

    def node_config_for(self, node_id: int) -> Config:
        return {**self.node_config, "partition-id": node_id, "num-partitions": self.num_nodes}

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


def run_message(app: ClientApp, msg: Message, ctx: Context) -> Message:
    """Run one message through the app; an exception becomes an error reply with its traceback."""
    try:
        reply = app(msg, ctx)
    except BaseException as e:  # noqa: BLE001 - a node's failure must never take the runtime down
        if isinstance(e, KeyboardInterrupt):
            raise
        tb = traceback.format_exc()
        reply = msg.error_reply("exception", f"{type(e).__name__}: {e}\n{tb}")
    # the runtime, not the app, decides the routing metadata
    reply.metadata.src = msg.metadata.dst
    reply.metadata.dst = msg.metadata.src
    reply.metadata.reply_to = msg.metadata.message_id
    reply.metadata.run_id = msg.metadata.run_id
    reply.metadata.round = msg.metadata.round
    return reply


AppLoader = Callable[[], ClientApp]
