import sys
from pathlib import Path

import numpy as np
import pytest

from corolla import Arrays, ClientApp, FedAvg, Rounds, ServerApp

ROOT = Path(__file__).resolve().parents[1]


def noise_app(fail_nodes=(), fail_round=None, bad_shape_nodes=()) -> ClientApp:
    """A tiny app: adds node-seeded noise; some nodes can be told to fail."""
    app = ClientApp()

    @app.train
    def train(msg, ctx):
        if ctx.node_id in fail_nodes and (fail_round is None or ctx.round == fail_round):
            raise RuntimeError(f"boom on node {ctx.node_id}")
        rng = ctx.rng()
        out = Arrays()
        for k, v in msg.content.arrays.items():
            out[k] = v + rng.standard_normal(v.shape).astype(v.dtype) * 0.1
        if ctx.node_id in bad_shape_nodes:
            out["w"] = np.zeros((3,), np.float32)
        ctx.state["count"] = ctx.state.get("count", 0) + 1
        return msg.reply(arrays=out, metrics={"num-examples": ctx.node_id + 1, "loss": float(ctx.node_id)})

    @app.evaluate
    def evaluate(msg, ctx):
        w = msg.content.arrays["w"]
        return msg.reply(metrics={"num-examples": 1, "loss": float(np.abs(w).mean())})

    return app


def initial_arrays() -> Arrays:
    return Arrays({"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)})


def simple_server(min_nodes=2, **kw) -> ServerApp:
    def fn(ctx):
        return Rounds(
            strategy=FedAvg(min_train_nodes=min_nodes, min_evaluate_nodes=min(min_nodes, 2)),
            initial_arrays=initial_arrays(),
            **kw,
        )

    return ServerApp(fn)


@pytest.fixture
def python():
    return sys.executable


@pytest.fixture
def procs(tmp_path):
    """Real coordinator/node/driver processes on 127.0.0.1 (deploy_procs.Procs), stopped by PID at the end."""
    from deploy_procs import Procs

    p = Procs(tmp_path)
    yield p
    p.stop_all()
