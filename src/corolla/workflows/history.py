"""What a run leaves behind: one record per round."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..records import Arrays, Metrics


@dataclass
class Failure:
    node: int
    kind: str  # message kind: train / evaluate
    error: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RoundRecord:
    round: int
    train: Metrics = field(default_factory=dict)
    evaluate: Metrics = field(default_factory=dict)
    server: Metrics = field(default_factory=dict)  # strategy/optimizer metrics and centralized evaluation
    seconds: float = 0.0
    sampled: list[int] = field(default_factory=list)
    replied: list[int] = field(default_factory=list)
    evaluate_sampled: list[int] = field(default_factory=list)
    evaluate_replied: list[int] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["metrics"] = {"train": d.pop("train"), "evaluate": d.pop("evaluate"), "server": d.pop("server")}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RoundRecord":
        d = dict(d)
        m = d.pop("metrics", {})
        d["failures"] = [Failure(**f) for f in d.get("failures", [])]
        return cls(train=m.get("train", {}), evaluate=m.get("evaluate", {}), server=m.get("server", {}), **d)


@dataclass
class History:
    run_id: str
    rounds: list[RoundRecord] = field(default_factory=list)
    arrays: Arrays | None = None  # final global arrays
    status: str = "running"

    @property
    def final_metrics(self) -> dict[str, Metrics]:
        """The last reported value of every metric, per group."""
        out: dict[str, Metrics] = {"train": {}, "evaluate": {}, "server": {}}
        for r in self.rounds:
            out["train"].update(r.train)
            out["evaluate"].update(r.evaluate)
            out["server"].update(r.server)
        return out

    @property
    def arrays_sha256(self) -> str | None:
        return self.arrays.sha256() if self.arrays is not None else None

    def metric(self, group: str, name: str) -> list[tuple[int, float]]:
        """(round, value) pairs of one metric, for plots and tests."""
        return [(r.round, getattr(r, group)[name]) for r in self.rounds if name in getattr(r, group)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "rounds": [r.to_dict() for r in self.rounds],
            "final_metrics": self.final_metrics,
            "arrays_sha256": self.arrays_sha256,
        }
