import numpy as np

from corolla import Arrays, FedAvg, Rounds, ServerApp


def server(ctx):
    return Rounds(
        strategy=FedAvg(
            fraction_train=float(ctx.run_config.get("fraction-train", 0.5)), min_train_nodes=2, fraction_evaluate=0.5
        ),
        initial_arrays=Arrays({"w": np.zeros((8, 4), np.float32), "b": np.zeros(4, np.float32)}),
        round_timeout=float(ctx.run_config.get("round-timeout", 60.0)),
    )


app = ServerApp(server)
