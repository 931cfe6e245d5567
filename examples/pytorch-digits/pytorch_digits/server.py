"""The server side: FedAvg over the nodes' weights, centralized evaluation on held-out data."""

from __future__ import annotations

import torch

from corolla import Arrays, FedAvg, Rounds, ServerApp, ServerContext
from corolla.seeding import derive_int

from .task import Net, get_arrays, load_test_data, set_arrays
from .task import evaluate as evaluate_model


def server(ctx: ServerContext) -> Rounds:
    cfg = ctx.run_config
    X_test, y_test = load_test_data(ctx.seed)
    net = Net()

    def evaluate(round: int, arrays: Arrays) -> tuple[float, dict]:
        set_arrays(net, arrays)
        loss, accuracy = evaluate_model(net, X_test, y_test)
        return loss, {"accuracy": accuracy}

    def initial_arrays() -> Arrays:
        torch.manual_seed(derive_int(ctx.seed, "init"))  # the same initial model for the same seed
        return get_arrays(Net())

    strategy = FedAvg(
        fraction_train=float(cfg.get("fraction-train", 0.5)),
        fraction_evaluate=float(cfg.get("fraction-evaluate", 0.5)),
        node_config={  # sent to the nodes with every train message
            "local-epochs": int(cfg.get("local-epochs", 5)),
            "learning-rate": float(cfg.get("learning-rate", 0.01)),
            "batch-size": int(cfg.get("batch-size", 16)),
        },
    )
    return Rounds(strategy=strategy, initial_arrays=initial_arrays, evaluate_fn=evaluate)


app = ServerApp(server)
