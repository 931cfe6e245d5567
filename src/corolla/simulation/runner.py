"""Run a federated simulation: one call from Python, the same one `corolla run` makes.

    history = run_simulation(server_app, client_app, num_nodes=20, num_rounds=5)
    history = run_project("examples/sklearn-digits", num_rounds=5)

With a store, every completed round is committed with a checkpoint (strategy state and
per-node state), so a run killed at any moment continues with ``resume=RUN_ID`` and ends with
exactly the arrays an uninterrupted run would have.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ..client.app import ClientApp
from ..grid import Grid
from ..project import Project
from ..records import Config
from ..store import Store
from ..workflows.context import NullObserver, RunObserver, ServerContext
from ..workflows.history import History, RoundRecord
from ..workflows.server_app import ServerApp
from .federation import Federation, NodeProperties, NodeStates
from .inline import InlineGrid

log = logging.getLogger("corolla")

BACKENDS = ("process", "inline")


def make_grid(
    backend: str, app: ClientApp, federation: Federation, states: NodeStates, workers: int | None = None
) -> Grid:
    if backend == "inline":
        return InlineGrid(app, federation, states)
    if backend == "process":
        from .process import ProcessGrid

        return ProcessGrid(app, federation, states, workers=workers)
    raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


class _StoreObserver:
    """Commits each finished round with its checkpoint; forwards progress to the display."""

    def __init__(self, store: Store, run_id: str, states: NodeStates, inner: RunObserver):
        self.store, self.run_id, self.states, self.inner = store, run_id, states, inner

    def round_started(self, round: int, num_rounds: int, stage: str, sampled: int) -> None:
        self.inner.round_started(round, num_rounds, stage, sampled)

    def reply(self, ok: bool) -> None:
        self.inner.reply(ok)

    def round_finished(self, record: RoundRecord, state: dict[str, Any]) -> None:
        for f in record.failures:
            self.store.add_event(
                self.run_id, "node-failure", f"node {f.node} ({f.kind}): {f.error}", round=record.round
            )
        checkpoint = {"strategy": state, "nodes": self.states.snapshot()}
        self.store.commit_round(self.run_id, record.to_dict(), checkpoint)
        self.inner.round_finished(record, state)


def run_simulation(
    server_app: ServerApp,
    client_app: ClientApp,
    *,
    num_nodes: int | None = None,
    num_rounds: int | None = None,
    backend: str = "process",
    seed: int | None = None,
    run_config: Config | None = None,
    node_config: Config | None = None,
    node_properties: NodeProperties | None = None,
    store: str | Path | Store | None = None,
    resume: str | None = None,
    observer: RunObserver | None = None,
    workers: int | None = None,
    project: str = "",
) -> History:
    """Simulate `num_nodes` virtual nodes running `client_app` under `server_app`.

    `num_nodes` defaults to 10, `seed` to 0, and `num_rounds` overrides ``run_config["num-rounds"]``
    (default 3). With `store` (a folder), the run, its rounds and checkpoints are persisted;
    `resume` continues a stored run with its stored seed, nodes and config (giving different
    ones is an error; only `num_rounds` may change).

    `node_properties` gives nodes properties (joined to their node config, and seen by
    selectors such as `ByProperty` and `ProportionalToSize`): a function ``node_id -> dict``,
    or a table ``{property: value | list cycled by node id}``. They are not stored with the
    run: pass the same ones when resuming.
    """
    if not isinstance(server_app, ServerApp):
        raise TypeError(f"server_app must be a corolla.ServerApp, got {type(server_app).__name__}")
    if not isinstance(client_app, ClientApp):
        raise TypeError(f"client_app must be a corolla.ClientApp, got {type(client_app).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    observer = observer or NullObserver()
    st = store if isinstance(store, Store) or store is None else Store(store)
    if resume and st is None:
        raise ValueError("resume needs the store the run was saved in (store=...)")
    config: Config = dict(run_config or {})
    if num_rounds is not None:
        config["num-rounds"] = num_rounds
    resume_from = None
    states = NodeStates()
    if resume:
        assert st is not None
        run_id, config, seed, num_nodes, resume_from, states = _reopen(st, resume, seed, num_nodes, config, backend)
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
            run_id = time.strftime("sim-%Y%m%d-%H%M%S", time.gmtime())
    num_rounds_final = int(config.get("num-rounds", 3))
    federation = Federation(
        num_nodes=num_nodes,
        run_id=run_id,
        seed=seed,
        run_config=config,
        node_config=dict(node_config or {}),
        node_properties=node_properties,
    )
    ctx = ServerContext(
        run_id=run_id,
        seed=seed,
        num_rounds=num_rounds_final,
        run_config=config,
        resume_from=resume_from,
        observer=_StoreObserver(st, run_id, states, observer) if st is not None else observer,
    )
    log_handler = _attach_run_log(st, run_id)
    grid = None
    try:
        log.info("run %s: %d nodes, %d rounds, backend %s, seed %d", run_id, num_nodes, num_rounds_final, backend, seed)
        grid = make_grid(backend, client_app, federation, states, workers)
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
        if log_handler is not None:
            logging.getLogger("corolla").removeHandler(log_handler)
            log_handler.close()


def _reopen(st: Store, resume: str, seed: int | None, num_nodes: int | None, config: Config, backend: str) -> tuple:
    """Load a stored run's settings, last checkpoint and records for `resume`."""
    info = st.get_run(resume)
    _check_resume(info, seed, num_nodes, config)
    run_id = info.run_id
    config = {**info.config, **({"num-rounds": config["num-rounds"]} if "num-rounds" in config else {})}
    resume_from, states = None, NodeStates()
    ck = st.latest_checkpoint(run_id)
    if ck is not None:
        last, saved = ck
        st.delete_rounds_after(run_id, last)
        records = [RoundRecord.from_dict(r) for r in st.rounds(run_id)]
        resume_from = (last, saved["strategy"], records)
        states = NodeStates({int(k): v for k, v in saved.get("nodes", {}).items()})
    else:
        st.delete_rounds_after(run_id, -1)
    st.update_run(run_id, num_rounds=int(config.get("num-rounds", 3)), backend=backend, config=config)
    st.set_status(run_id, "running")
    st.add_event(run_id, "resume", f"resumed after round {resume_from[0] if resume_from else 0}")
    return run_id, config, info.seed, info.num_nodes, resume_from, states


def _check_resume(info: Any, seed: int | None, num_nodes: int | None, run_config: Config | None) -> None:
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


def run_project(
    path: str | Path = ".",
    *,
    num_nodes: int | None = None,
    num_rounds: int | None = None,
    backend: str | None = None,
    seed: int | None = None,
    config: Config | None = None,
    store: str | Path | None = None,
    resume: str | None = None,
    observer: RunObserver | None = None,
) -> History:
    """Run a project folder as `corolla run` does; the store defaults to PATH/.corolla.

    Nodes get properties from an optional table (a list cycles by node id)::

        [tool.corolla.simulation.node-properties]
        gpu = [true, false, false]
    """
    proj = Project.load(path)
    server_app, client_app = proj.load_apps()
    sim = proj.simulation
    if resume:  # the stored run's settings apply; only explicit choices are checked against them
        run_config = dict(config or {})
    else:
        run_config = {**proj.config, **(config or {})}
        num_nodes = int(num_nodes if num_nodes is not None else sim.get("nodes", 10))
        seed = int(seed if seed is not None else proj.seed)
    return run_simulation(
        server_app,
        client_app,
        num_nodes=num_nodes,
        num_rounds=num_rounds,
        backend=backend or sim.get("backend", "process"),
        seed=seed,
        run_config=run_config,
        node_config=sim.get("node-config"),
        node_properties=sim.get("node-properties"),
        store=store if store is not None else proj.path / ".corolla",
        resume=resume,
        observer=observer,
        workers=sim.get("workers"),
        project=str(proj.path),
    )
