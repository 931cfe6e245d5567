"""Live run display: round i/R, replies/sampled, latest metrics, elapsed and ETA."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from ..workflows.history import RoundRecord


def _fmt_metrics(rec: RoundRecord, limit: int = 4) -> str:
    items: list[str] = []
    for group, metrics in (("server", rec.server), ("evaluate", rec.evaluate), ("train", rec.train)):
        for k, v in metrics.items():
            if k in ("num-updates", "weight-sum", "server-lr"):
                continue
            items.append(f"{group}.{k}={v:.4g}")
    return "  ".join(items[:limit])


def _fmt_secs(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class LiveProgress:
    """A `RunObserver` that draws one live status line (or plain lines when not on a terminal)."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.live: Live | None = None
        self.start = time.monotonic()
        self.round = 0
        self.num_rounds = 0
        self.stage = ""
        self.sampled = 0
        self.ok = 0
        self.failed = 0
        self.first_round: int | None = None
        self.first_start = self.start
        self.last = ""

    def __enter__(self) -> "LiveProgress":
        if self.console.is_terminal:
            self.live = Live(self._render(), console=self.console, refresh_per_second=8, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.update(self._render())
            self.live.__exit__(*exc)

    def _eta(self) -> str:
        if self.first_round is None or self.round <= self.first_round:
            return "?"
        done = self.round - self.first_round
        per = (time.monotonic() - self.first_start) / done
        return _fmt_secs(per * max(0, self.num_rounds - self.round + 1))

    def _render(self) -> Text:
        elapsed = _fmt_secs(time.monotonic() - self.start)
        if not self.num_rounds:
            return Text(f"starting: loading the apps and the workers  elapsed {elapsed}")
        line = (
            f"round {self.round}/{self.num_rounds}  {self.stage} {self.ok}/{self.sampled} replied"
            + (f" ({self.failed} failed)" if self.failed else "")
            + f"  elapsed {elapsed}  ETA {self._eta()}"
        )
        return Text(line + ("\n  " + self.last if self.last else ""))

    def round_started(self, round: int, num_rounds: int, stage: str, sampled: int) -> None:
        if self.first_round is None:
            self.first_round = round
            self.first_start = time.monotonic()
        self.round, self.num_rounds, self.stage, self.sampled = round, num_rounds, stage, sampled
        self.ok = self.failed = 0
        if self.live:
            self.live.update(self._render())

    def reply(self, ok: bool) -> None:
        if ok:
            self.ok += 1
        else:
            self.failed += 1
        if self.live:
            self.live.update(self._render())

    def round_finished(self, record: RoundRecord, state: dict[str, Any]) -> None:
        self.last = f"round {record.round}: {_fmt_metrics(record)}"
        if self.live:
            self.live.update(self._render())
        else:
            fails = f"  ({len(record.failures)} failures)" if record.failures else ""
            print(f"[{_fmt_secs(time.monotonic() - self.start)}] {self.last}{fails}", file=sys.stderr, flush=True)
