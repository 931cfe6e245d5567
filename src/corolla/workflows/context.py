"""What a workflow gets from its runtime besides the grid: run identity, config, persistence hooks."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..records import Config
from .history import RoundRecord

log = logging.getLogger("corolla")


class RunObserver(Protocol):
    """Receives progress; the runtime persists rounds and drives the live display from it."""

    def round_started(self, round: int, num_rounds: int, stage: str, sampled: int) -> None: ...

    def reply(self, ok: bool) -> None: ...

    def round_finished(self, record: RoundRecord, state: dict[str, Any]) -> None:
        """Called once a round is complete; `state` is the strategy state to checkpoint."""
        ...


class NullObserver:
    def round_started(self, round: int, num_rounds: int, stage: str, sampled: int) -> None:
        pass

    def reply(self, ok: bool) -> None:
        pass

    def round_finished(self, record: RoundRecord, state: dict[str, Any]) -> None:
        pass


@dataclass
class ServerContext:
    run_id: str
    seed: int = 0
    num_rounds: int = 3
    run_config: Config = field(default_factory=dict)
    #: (last completed round, strategy state, its records) when resuming, else None
    resume_from: tuple[int, dict[str, Any], list[RoundRecord]] | None = None
    observer: RunObserver = field(default_factory=NullObserver)
