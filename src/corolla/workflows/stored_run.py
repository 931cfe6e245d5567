"""Running a server app with a store, the same way in every runtime.

Creates (or reopens, for ``resume``) the run in the store, commits each finished round with
its checkpoint, records how the run ended, and gives the run its own log file. The runtime
only says how to open its grid (`OpenGrid`); simulation and deployment both come through here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import buffers
from ..grid import Grid
from ..records import Config
from ..store import Store
from .context import NullObserver, RunObserver, ServerContext
from .history import History, RoundRecord
from .server_app import ServerApp

log = logging.getLogger("corolla")


@dataclass
class RunSetup:
    """What a runtime needs to open its grid for a run (new or resumed)."""

    run_id: str
    seed: int
    config: Config
    num_nodes: int
    #: per-node state saved with the last checkpoint (simulation keeps node state; nodes of a
    #: deployment keep their own)
    node_states: dict[int, dict[str, Any]] = field(default_factory=dict)


#: opens the runtime's grid; returns it and, if the runtime holds per-node state, a function
#: that snapshots it for checkpoints
OpenGrid = Callable[[RunSetup], tuple[Grid, Callable[[], dict] | None]]


class StoreObserver:
    """Commits each finished round with its checkpoint; forwards progress to the display."""

    def __init__(self, store: Store, run_id: str, snapshot: Callable[[], dict] | None, inner: RunObserver):
        self.store, self.run_id, self.snapshot, self.inner = store, run_id, snapshot, inner

    def round_started(self, round: int, num_rounds: int, stage: str, sampled: int) -> None:
        self.inner.round_started(round, num_rounds, stage, sampled)

    def reply(self, ok: bool) -> None:
        self.inner.reply(ok)

    def round_finished(self, record: RoundRecord, state: dict[str, Any]) -> None:
        for f in record.failures:
            self.store.add_event(
                self.run_id, "node-failure", f"node {f.node} ({f.kind}): {f.error}", round=record.round
            )
        checkpoint: dict[str, Any] = {"strategy": state}
        if self.snapshot is not None:
            checkpoint["nodes"] = self.snapshot()
        self.store.commit_round(self.run_id, record.to_dict(), checkpoint)
        self.inner.round_finished(record, state)


def execute(
    server_app: ServerApp,
    open_grid: OpenGrid,
    *,
    store: str | Path | Store | None,
    resume: str | None,
    seed: int | None,
    num_nodes: int | None,
    config: Config,
    backend: str,
    project: str = "",
    observer: RunObserver | None = None,
    run_prefix: str = "sim",
) -> History:
    """Run `server_app` on the grid `open_grid` makes, persisting to `store` when given."""
    observer = observer or NullObserver()
    st = store if isinstance(store, Store) or store is None else Store(store)
    if resume and st is None:
        raise ValueError("resume needs the store the run was saved in (store=...)")
    resume_from = None
    node_states: dict[int, dict[str, Any]] = {}
    if resume:
        assert st is not None
        run_id, config, seed, num_nodes, resume_from, node_states = _reopen(
            st, resume, seed, num_nodes, config, backend
        )
    else:
        num_nodes = 10 if num_nodes is None else num_nodes
        seed = 0 if seed is None else seed
        if st is not None:
            run_id = st.create_run(
                project=project,
                seed=seed,
                num_rounds=int(config.get("num-rounds", 3)),
                num_nodes=num_nodes,
                backend=backend,
                config=config,
            )
        else:
            run_id = time.strftime(f"{run_prefix}-%Y%m%d-%H%M%S", time.gmtime())
    num_rounds = int(config.get("num-rounds", 3))
    setup = RunSetup(run_id=run_id, seed=seed, config=config, num_nodes=num_nodes, node_states=node_states)
    log_handler = _attach_run_log(st, run_id)
    grid = None
    try:
        log.info("run %s: %d nodes, %d rounds, backend %s, seed %d", run_id, num_nodes, num_rounds, backend, seed)
        grid, snapshot = open_grid(setup)
        ctx = ServerContext(
            run_id=run_id,
            seed=seed,
            num_rounds=num_rounds,
            run_config=config,
            resume_from=resume_from,
            observer=StoreObserver(st, run_id, snapshot, observer) if st is not None else observer,
        )
        history = server_app.run(grid, ctx)
        if st is not None:
            st.set_status(run_id, "completed")
        return history
    except KeyboardInterrupt:
        if st is not None:
            st.set_status(run_id, "interrupted", "interrupted by the user")
        raise
    except BaseException as e:
        if st is not None:
            st.set_status(run_id, "failed", f"{type(e).__name__}: {e}")
        log.error("run %s failed: %s", run_id, e)
        raise
    finally:
        if grid is not None:
            grid.close()
        buffers.pool.clear()  # the run's idle model-sized blocks go back to the system now
        if log_handler is not None:
            logging.getLogger("corolla").removeHandler(log_handler)
            log_handler.close()


def _reopen(st: Store, resume: str, seed: int | None, num_nodes: int | None, config: Config, backend: str) -> tuple:
    """Load a stored run's settings, last checkpoint and records for `resume`."""
    info = st.get_run(resume)
    check_resume(info, seed, num_nodes, config)
    run_id = info.run_id
    config = {**info.config, **({"num-rounds": config["num-rounds"]} if "num-rounds" in config else {})}
    resume_from, node_states = None, {}
    ck = st.latest_checkpoint(run_id)
    if ck is not None:
        last, saved = ck
        st.delete_rounds_after(run_id, last)
        records = [RoundRecord.from_dict(r) for r in st.rounds(run_id)]
        resume_from = (last, saved["strategy"], records)
        node_states = {int(k): v for k, v in saved.get("nodes", {}).items()}
    else:
        st.delete_rounds_after(run_id, -1)
    st.update_run(run_id, num_rounds=int(config.get("num-rounds", 3)), backend=backend, config=config)
    st.set_status(run_id, "running")
    st.add_event(run_id, "resume", f"resumed after round {resume_from[0] if resume_from else 0}")
    return run_id, config, info.seed, info.num_nodes, resume_from, node_states


def check_resume(info: Any, seed: int | None, num_nodes: int | None, run_config: Config | None) -> None:
    """A resumed run must be the same run: only its number of rounds may change."""
    changed = [f"seed {info.seed} -> {seed}"] if seed is not None and seed != info.seed else []
    if num_nodes is not None and num_nodes != info.num_nodes:
        changed.append(f"nodes {info.num_nodes} -> {num_nodes}")
    for k, v in (run_config or {}).items():
        if k != "num-rounds" and info.config.get(k) != v:
            changed.append(f"config {k}: {info.config.get(k)!r} -> {v!r}")
    if changed:
        raise ValueError(
            f"run {info.run_id} cannot resume with different settings ({'; '.join(changed)}); "
            f"resume it unchanged (only --rounds may grow it) or start a new run"
        )


def _attach_run_log(st: Store | None, run_id: str) -> logging.Handler | None:
    """Each stored run gets its own log file beside the database (node tracebacks land there)."""
    if st is None:
        return None
    path = Path(st.root) / "logs" / f"{run_id}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    lg = logging.getLogger("corolla")
    lg.addHandler(handler)
    if lg.level == logging.NOTSET or lg.level > logging.INFO:
        lg.setLevel(logging.INFO)
    return handler
