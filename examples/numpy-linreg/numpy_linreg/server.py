"""The server side: FedAvg over the nodes' weights, centralized evaluation on held-out data."""

from __future__ import annotations

from corolla import Arrays, FedAvg, Rounds, ServerApp, ServerContext

from .task import initial_arrays, load_test_data, mse


def server(ctx: ServerContext) -> Rounds:
    cfg = ctx.run_config
    X_test, y_test = load_test_data(ctx.seed)

    def evaluate(round: int, arrays: Arrays) -> dict:
        return {"loss": mse(arrays, X_test, y_test)}

    strategy = FedAvg(
        fraction_train=float(cfg.get("fraction-train", 0.5)),
        node_config={  # sent to the nodes with every train message
            "local-epochs": int(cfg.get("local-epochs", 5)),
            "learning-rate": float(cfg.get("learning-rate", 0.05)),
        },
    )
    return Rounds(strategy=strategy, initial_arrays=initial_arrays(), evaluate_fn=evaluate)


app = ServerApp(server)
