"""What the server side and a node exchange.

A message has a `kind` (``train``, ``evaluate``, ``query`` or any custom kind), `content`
(arrays, metrics, config), `metadata` (who, when, which run and round) and, for a failed reply,
an `error`. Kinds are open-ended so multi-step protocols can define their own.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any

from .records import Arrays, Config, Metrics

TRAIN = "train"
EVALUATE = "evaluate"
QUERY = "query"

#: the server side's address in `Metadata.src` / `dst` (node ids are >= 0)
SERVER_ID = -1

_ids = itertools.count()
_prefix = f"{os.getpid():x}"


def new_message_id() -> str:
    return f"{_prefix}-{next(_ids):x}"


@dataclass
class Content:
    arrays: Arrays = field(default_factory=Arrays)
    metrics: Metrics = field(default_factory=dict)
    config: Config = field(default_factory=dict)


@dataclass
class Metadata:
    run_id: str = ""
    round: int = 0
    src: int = SERVER_ID  # node id, or SERVER_ID
    dst: int = SERVER_ID
    message_id: str = ""
    reply_to: str = ""
    deadline: float = 0.0  # wall clock (time.time()) after which the sender stops waiting
    created: float = 0.0


@dataclass
class Error:
    code: str  # "exception", "timeout", "node-lost", "invalid-reply", ...
    text: str

    def __str__(self) -> str:
        return f"{self.code}: {self.text}"


@dataclass
class Message:
    kind: str
    content: Content = field(default_factory=Content)
    metadata: Metadata = field(default_factory=Metadata)
    error: Error | None = None

    @classmethod
    def create(
        cls,
        kind: str,
        dst: int,
        *,
        arrays: Arrays | None = None,
        config: Config | None = None,
        metrics: Metrics | None = None,
        run_id: str = "",
        round: int = 0,
        deadline: float = 0.0,
    ) -> "Message":
        return cls(
            kind=kind,
            content=Content(arrays if arrays is not None else Arrays(), dict(metrics or {}), dict(config or {})),
            metadata=Metadata(
                run_id=run_id,
                round=round,
                src=SERVER_ID,
                dst=dst,
                message_id=new_message_id(),
                deadline=deadline,
                created=time.time(),
            ),
        )

    @property
    def ok(self) -> bool:
        return self.error is None

    def reply(
        self,
        arrays: Arrays | None = None,
        metrics: Metrics | None = None,
        config: Config | None = None,
    ) -> "Message":
        """A reply to this message, addressed back to its sender."""
        return Message(
            kind=self.kind,
            content=Content(arrays if arrays is not None else Arrays(), dict(metrics or {}), dict(config or {})),
            metadata=self._reply_metadata(),
        )

    def error_reply(self, code: str, text: str) -> "Message":
        return Message(kind=self.kind, metadata=self._reply_metadata(), error=Error(code, text))

    def _reply_metadata(self) -> Metadata:
        m = self.metadata
        return replace(m, src=m.dst, dst=m.src, message_id=new_message_id(), reply_to=m.message_id, created=time.time())

    def with_content(self, **changes: Any) -> "Message":
        return replace(self, content=replace(self.content, **changes))
