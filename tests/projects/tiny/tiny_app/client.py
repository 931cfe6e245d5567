"""A tiny app for end-to-end tests: seeded noise plus a per-node counter kept in Context.state."""

import time

import numpy as np

from corolla import Arrays, ClientApp

app = ClientApp()


@app.train
def train(msg, ctx):
    time.sleep(float(ctx.run_config.get("sleep", 0.0)))
    if ctx.node_id == int(ctx.run_config.get("fail-node", -1)):
        raise RuntimeError(f"node {ctx.node_id} cannot train")
    ctx.state["visits"] = ctx.state.get("visits", 0) + 1
    rng = ctx.rng()
    out = Arrays()
    for k, v in msg.content.arrays.items():
        step = rng.standard_normal(v.shape).astype(v.dtype) * np.float32(0.1 * ctx.state["visits"])
        out[k] = v + step
    return msg.reply(arrays=out, metrics={"num-examples": 10 + ctx.node_id, "visits": ctx.state["visits"]})


@app.evaluate
def evaluate(msg, ctx):
    return msg.reply(metrics={"num-examples": 1, "norm": float(np.linalg.norm(msg.content.arrays["w"]))})
