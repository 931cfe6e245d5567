"""Run a federated simulation: one call from Python, the same one `corolla run` makes.

    history = run_simulation(server_app, client_app, num_nodes=20, num_rounds=5)
    history = run_project("examples/sklearn-digits", num_rounds=5)

With a store, every completed round is committed with a checkpoint (strategy state and
per-node state), so a run killed at any moment continues with ``resume=RUN_ID`` and ends with
exactly the arrays an uninterrupted run would have.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ..client.app import ClientApp
from ..grid import Grid
from ..project import Project
from ..records import Config
from ..store import Store
from ..workflows.context import RunObserver
from ..workflows.history import History
from ..workflows.server_app import ServerApp
from ..workflows.stored_run import RunSetup, execute
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
    config: Config = dict(run_config or {})
    if num_rounds is not None:
        config["num-rounds"] = num_rounds

    def open_grid(setup: RunSetup) -> tuple[Grid, Callable[[], dict]]:
        federation = Federation(
            num_nodes=setup.num_nodes,
            run_id=setup.run_id,
            seed=setup.seed,
            run_config=setup.config,
            node_config=dict(node_config or {}),
            node_properties=node_properties,
        )
        states = NodeStates(setup.node_states)
        return make_grid(backend, client_app, federation, states, workers), states.snapshot

    return execute(
        server_app,
        open_grid,
        store=store,
        resume=resume,
        seed=seed,
        num_nodes=num_nodes,
        config=config,
        backend=backend,
        project=project,
        observer=observer,
    )


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
