"""The server side's handle on the federation.

Workflows only ever see a `Grid`; simulation and deployment each provide one. Replies are
yielded as they arrive, so a workflow can fold each into its aggregator and drop it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

from .message import Message


@runtime_checkable
class Grid(Protocol):
    def node_ids(self) -> Sequence[int]:
        """The federation's node ids. May be lazy (a `range` for a million virtual nodes)."""
        ...

    def send(self, messages: Sequence[Message]) -> list[str]:
        """Queue messages for their `metadata.dst` nodes; returns their message ids.

        Messages that share one `Arrays` object are broadcast: the grid encodes or shares
        those arrays once, not once per node.
        """
        ...

    def receive(self, message_ids: Sequence[str], timeout: float) -> Iterator[Message]:
        """Yield one reply per message id as replies arrive.

        Simulation grids yield in the order of `message_ids` (buffering early arrivals), so
        aggregation folds in a fixed order and results are bit-reproducible.

        A node that fails, disappears or misses the deadline yields an error reply
        (code ``timeout``, ``node-lost``, ``exception``...), so the iterator always ends within
        `timeout` seconds plus a small margin and never hangs.
        """
        ...

    def close(self) -> None: ...


def send_and_receive(grid: Grid, messages: Sequence[Message], timeout: float) -> Iterator[Message]:
    """Send messages and yield their replies as they arrive."""
    ids = grid.send(messages)
    return grid.receive(ids, timeout)


def timeout_reply(msg: Message, waited: float) -> Message:
    return msg.error_reply("timeout", f"node {msg.metadata.dst} sent no reply to {msg.kind!r} within {waited:.1f} s")


def deadline_in(seconds: float) -> float:
    return time.time() + seconds
