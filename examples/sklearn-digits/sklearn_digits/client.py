"""The node side, written as decorated handlers: each takes the message and the node's
context and returns a reply."""

from __future__ import annotations

from corolla import ClientApp, Context, Message

from .task import evaluate as evaluate_model
from .task import get_arrays, load_data, make_model
from .task import train as train_model

app = ClientApp()


def _data(ctx: Context):
    # in a simulation every node knows its partition; the run seed fixes the split
    alpha = float(ctx.run_config.get("dirichlet-alpha", 0.5))
    return load_data(ctx.partition_id, ctx.num_partitions, alpha, ctx.seed)


@app.train
def train(msg: Message, ctx: Context) -> Message:
    X, y, _, _ = _data(ctx)
    config = msg.content.config  # local-epochs and learning-rate, sent by the server
    model = make_model(msg.content.arrays, float(config["learning-rate"]), seed=ctx.seed_for("train"))
    loss = train_model(model, X, y, int(config["local-epochs"]))
    # num-examples weights this node's model in the average
    return msg.reply(arrays=get_arrays(model), metrics={"train-loss": loss, "num-examples": len(y)})


@app.evaluate
def evaluate(msg: Message, ctx: Context) -> Message:
    _, _, X_test, y_test = _data(ctx)
    loss, accuracy = evaluate_model(make_model(msg.content.arrays), X_test, y_test)
    return msg.reply(metrics={"loss": loss, "accuracy": accuracy, "num-examples": len(y_test)})
