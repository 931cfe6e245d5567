"""ServerApp: how a project says what its run does.

    def server(ctx: ServerContext) -> Rounds:
        return Rounds(strategy=FedAvg(), initial_arrays=init_arrays())

    app = ServerApp(server)

The function runs once per run, after the runtime has resolved run config, seed and rounds,
so ``ctx.run_config`` (project defaults plus ``-c key=value``) can shape the workflow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..grid import Grid
from .context import ServerContext
from .history import History


class Workflow(Protocol):
    def run(self, grid: Grid, ctx: ServerContext) -> History: ...


class ServerApp:
    def __init__(self, server_fn: Callable[[ServerContext], Workflow]):
        if not callable(server_fn):
            raise TypeError("ServerApp takes a function (ServerContext) -> workflow, e.g. Rounds(...)")
        self.server_fn = server_fn

    def run(self, grid: Grid, ctx: ServerContext) -> History:
        workflow = self.server_fn(ctx)
        if not hasattr(workflow, "run"):
            raise TypeError(
                f"the ServerApp function returned {type(workflow).__name__}; it must return a workflow "
                f"such as corolla.Rounds(strategy=..., initial_arrays=...)"
            )
        return workflow.run(grid, ctx)
