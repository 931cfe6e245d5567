"""Run a project against a coordinator (`corolla run PROJECT --server HOST:PORT`).

The same server app as in simulation, on a `DeployGrid`. Rounds and checkpoints are committed to
the driver's store (default PROJECT/.corolla), so a killed driver continues with ``resume``; the
coordinator is told each round's record and the run's status, so `corolla runs --server` shows
the runs it served, across coordinator restarts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from ..grid import Grid
from ..message import Message
from ..project import Project
from ..records import Config
from ..store import Store
from ..wire import corolla_pb2 as pb
from ..workflows.context import NullObserver, RunObserver
from ..workflows.history import History, RoundRecord
from ..workflows.server_app import ServerApp
from ..workflows.stored_run import RunSetup, execute
from .driver import DeployGrid


class _Reporter:
    """Forwards progress, and tells the coordinator each finished round."""

    def __init__(self, inner: RunObserver, opened: dict[str, Any]):
        self.inner, self.opened = inner, opened  # opened: the grid and run record, once open

    def round_started(self, round: int, num_rounds: int, stage: str, sampled: int) -> None:
        self.inner.round_started(round, num_rounds, stage, sampled)

    def reply(self, ok: bool) -> None:
        self.inner.reply(ok)

    def round_finished(self, record: RoundRecord, state: dict[str, Any]) -> None:
        self.inner.round_finished(record, state)
        rec = self.opened["record"]
        rec.rounds_done = record.round
        rec.summary_json = json.dumps(record.to_dict(), default=float)
        rec.updated = time.time()
        self.opened["grid"].report_run(rec)


class _KeepOpen:
    """The grid as the workflow sees it; closed by `run_deployment` after the final report."""

    def __init__(self, grid: DeployGrid):
        self.grid = grid

    def node_ids(self) -> Sequence[int]:
        return self.grid.node_ids()

    def send(self, messages: Sequence[Message]) -> list[str]:
        return self.grid.send(messages)

    def receive(self, message_ids: Sequence[str], timeout: float) -> Iterator[Message]:
        return self.grid.receive(message_ids, timeout)

    def close(self) -> None:
        pass


def run_deployment(
    server_app: ServerApp,
    server: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    key: Any = None,
    num_rounds: int | None = None,
    seed: int | None = None,
    run_config: Config | None = None,
    min_nodes: int = 1,
    wait_nodes_s: float = 60.0,
    store: str | Path | Store | None = None,
    resume: str | None = None,
    observer: RunObserver | None = None,
    project: str = "",
) -> History:
    """Run `server_app` on the nodes connected to the coordinator at `server`.

    The driver waits up to `wait_nodes_s` for `min_nodes` nodes. With `store`, rounds and
    checkpoints are persisted there and `resume=RUN_ID` continues a run whose driver died.
    """
    config: Config = dict(run_config or {})
    if num_rounds is not None:
        config["num-rounds"] = num_rounds
    observer = observer or NullObserver()
    holder: dict[str, Any] = {}  # the grid and the coordinator's run record, once opened

    def open_grid(setup: RunSetup) -> tuple[Grid, None]:
        grid = DeployGrid(
            server,
            credentials=credentials,
            key=key,
            run_config=setup.config,
            seed=setup.seed,
            min_nodes=min_nodes,
            wait_nodes_s=wait_nodes_s,
        )
        record = pb.RunRecord(
            run_id=setup.run_id,
            status="running",
            project=project,
            seed=setup.seed,
            num_rounds=int(setup.config.get("num-rounds", 3)),
            created=time.time(),
        )
        holder["grid"], holder["record"] = grid, record
        grid.report_run(record)
        return _KeepOpen(grid), None

    status, error = "failed", ""
    try:
        history = execute(
            server_app,
            open_grid,
            store=store,
            resume=resume,
            seed=seed,
            num_nodes=None if resume else min_nodes,
            config=config,
            backend="deployment",
            project=project,
            observer=_Reporter(observer, holder),
            run_prefix="run",
        )
        status = "completed"
        return history
    except KeyboardInterrupt:
        status, error = "interrupted", "interrupted by the user"
        raise
    except BaseException as e:
        error = f"{type(e).__name__}: {e}"
        raise
    finally:
        grid = holder.get("grid")
        if grid is not None:
            rec = holder["record"]
            rec.status, rec.error, rec.updated = status, error, time.time()
            grid.report_run(rec)
            grid.close()


def run_project_deployed(
    path: str | Path,
    server: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    key: Any = None,
    num_rounds: int | None = None,
    seed: int | None = None,
    config: Config | None = None,
    min_nodes: int | None = None,
    wait_nodes_s: float | None = None,
    store: str | Path | None = None,
    resume: str | None = None,
    observer: RunObserver | None = None,
) -> History:
    """A project folder's server app against a coordinator; settings as in `run_project`, plus
    ``[tool.corolla.deployment]`` ``min-nodes`` and ``wait-nodes`` (seconds)."""
    proj = Project.load(path)
    server_app, _ = proj.load_apps()
    dep = proj.deployment
    if resume:
        run_config = dict(config or {})
    else:
        run_config = {**proj.config, **(config or {})}
        seed = int(seed if seed is not None else proj.seed)
    return run_deployment(
        server_app,
        server,
        credentials=credentials,
        key=key,
        num_rounds=num_rounds,
        seed=seed,
        run_config=run_config,
        min_nodes=int(min_nodes if min_nodes is not None else dep.get("min-nodes", 1)),
        wait_nodes_s=float(wait_nodes_s if wait_nodes_s is not None else dep.get("wait-nodes", 60.0)),
        store=store if store is not None else proj.path / ".corolla",
        resume=resume,
        observer=observer,
        project=str(proj.path),
    )
