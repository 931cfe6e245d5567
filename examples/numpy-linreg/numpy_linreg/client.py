"""The node side, written with the class-style API: a `Client` with `fit` and `evaluate`."""

from __future__ import annotations

from corolla import Arrays, Client, ClientApp, Config, Context

from .task import load_data, mse, train


class LinearRegressionClient(Client):
    def __init__(self, ctx: Context):
        num_examples = int(ctx.run_config.get("examples-per-node", 100))
        self.X, self.y, self.X_test, self.y_test = load_data(ctx.partition_id, ctx.seed, num_examples)

    def fit(self, arrays: Arrays, config: Config) -> tuple[Arrays, int, dict]:
        # the server sends local-epochs and learning-rate with every train message
        new, loss = train(arrays, self.X, self.y, int(config["local-epochs"]), float(config["learning-rate"]))
        return new, len(self.y), {"train-loss": loss}  # num-examples is added for us

    def evaluate(self, arrays: Arrays, config: Config) -> tuple[float, int, dict]:
        loss = mse(arrays, self.X_test, self.y_test)
        return loss, len(self.y_test), {}  # loss (mean squared error) and num-examples are added for us


app = ClientApp.from_client(LinearRegressionClient)
