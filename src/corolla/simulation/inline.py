"""The `inline` backend: every node's handler runs sequentially in this process.

Breakpoints and print debugging work; nothing is pickled or copied.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence

from ..client.app import ClientApp, run_message
from ..grid import NodeRange, timeout_reply
from ..message import Message
from ..records import Arrays
from .federation import Federation, NodeStates


class InlineGrid:
    def __init__(self, app: ClientApp, federation: Federation, states: NodeStates | None = None):
        self.app = app
        self.federation = federation
        self.states = states if states is not None else NodeStates()
        self._pending: dict[str, Message] = {}

    def node_ids(self) -> NodeRange:
        return self.federation.node_ids()

    def send(self, messages: Sequence[Message]) -> list[str]:
        n = self.federation.num_nodes
        views: dict[int, Arrays] = {}
        for m in messages:
            if not 0 <= m.metadata.dst < n:
                raise ValueError(f"message to node {m.metadata.dst}, but the federation has nodes 0..{n - 1}")
            arrays = m.content.arrays
            if id(arrays) not in views:
                views[id(arrays)] = read_only(arrays)
            self._pending[m.metadata.message_id] = m.with_content(arrays=views[id(arrays)])
        return [m.metadata.message_id for m in messages]

    def receive(self, message_ids: Sequence[str], timeout: float) -> Iterator[Message]:
        start = time.monotonic()
        for mid in message_ids:
            msg = self._pending.pop(mid)
            if time.monotonic() - start > timeout:
                yield timeout_reply(msg, time.monotonic() - start)
                continue
            node = msg.metadata.dst
            # a deep copy so a failed handler cannot leave half-modified state behind
            ctx = self.federation.context(node, msg.metadata.round, copy.deepcopy(self.states.get(node)))
            reply = run_message(self.app, msg, ctx)
            if reply.error is None:
                self.states.put(node, ctx.state)
                reply = reply.with_content(arrays=snapshot(reply.content.arrays))
            yield reply

    def close(self) -> None:
        self._pending.clear()


def read_only(arrays: Arrays) -> Arrays:
    """Views that raise on in-place writes, so a handler cannot corrupt the global arrays."""
    out = Arrays()
    for k, v in arrays.items():
        view = v.view()
        view.flags.writeable = False
        out[k] = view
    return out


def snapshot(arrays: Arrays) -> Arrays:
    """Copies of the reply's writable arrays.

    An app may return views of a model it reuses for the next node (``Arrays.from_torch`` on
    one module-level net); aggregators may read a reply after the next node has run (`Mean`
    folds a window of replies at once), so each reply is frozen here. The process backend gets
    the same guarantee from copying replies into shared memory.
    """
    return Arrays((k, v.copy() if v.flags.writeable else v) for k, v in arrays.items())
