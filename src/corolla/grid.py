"""The server side's handle on the federation.

Workflows only ever see a `Grid`; simulation and deployment each provide one. Replies are
yielded as they arrive, so a workflow can fold each into its aggregator and drop it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, overload, runtime_checkable

from .message import Message


@runtime_checkable
class Grid(Protocol):
    def node_ids(self) -> Sequence[int]:
        """The federation's node ids. May be lazy (a `range` for a million virtual nodes).

        It may also be a `NodeView`: a sequence that knows each node's properties, which
        selectors read with `properties_of`."""
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


# -- node properties --------------------------------------------------------------------------


@runtime_checkable
class NodeView(Protocol):
    """The node ids (a `Sequence[int]`, possibly lazy) plus each node's properties.

    Selectors take any ``Sequence[int]``; when it is a `NodeView` they may also read what is
    known about a node (in simulation: its node config, e.g. ``partition-id``, ``num-partitions``
    and per-node properties such as ``{"gpu": True, "num-examples": 512}``). Use
    `properties_of` to read them, so a plain sequence of ids keeps working.
    """

    def __len__(self) -> int: ...

    def __getitem__(self, index: Any) -> Any: ...

    def __iter__(self) -> Iterator[int]: ...

    def properties(self, node_id: int) -> Mapping[str, Any]: ...


def properties_of(nodes: Sequence[int], node_id: int) -> Mapping[str, Any]:
    """`nodes.properties(node_id)` when `nodes` is a `NodeView`, else ``{}``."""
    fn = getattr(nodes, "properties", None)
    return fn(node_id) if callable(fn) else {}


class NodeRange(Sequence[int]):
    """A lazy `NodeView` over a `range` of node ids: O(1) memory for any number of nodes.

    ``properties(node_id)`` calls the given function (computed on demand, never stored);
    without one every node has no properties. Slicing keeps the properties.
    """

    __slots__ = ("ids", "_properties")

    def __init__(self, ids: range, properties: Callable[[int], Mapping[str, Any]] | None = None):
        if not isinstance(ids, range):
            raise TypeError(f"NodeRange wraps a range of node ids, got {type(ids).__name__}")
        self.ids = ids
        self._properties = properties

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> "NodeRange": ...

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return NodeRange(self.ids[index], self._properties)
        return self.ids[index]

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids)

    def __reversed__(self) -> Iterator[int]:
        return reversed(self.ids)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.ids

    def index(self, node_id: Any, start: int = 0, stop: int | None = None) -> int:
        i = self.ids.index(node_id)
        if i < start or (stop is not None and i >= stop):
            raise ValueError(f"{node_id} is not in range")
        return i

    def count(self, node_id: Any) -> int:
        return self.ids.count(node_id)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, NodeRange):
            return self.ids == other.ids
        if isinstance(other, range):
            return self.ids == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.ids)

    def __repr__(self) -> str:
        return f"NodeRange({self.ids!r})"

    def properties(self, node_id: int) -> Mapping[str, Any]:
        if node_id not in self.ids:
            raise KeyError(f"node {node_id} is not in this federation ({self.ids})")
        return {} if self._properties is None else self._properties(node_id)
