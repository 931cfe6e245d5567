import numpy as np
import pytest

from corolla import Arrays, Client, ClientApp, Context
from corolla.client.app import ClientAppError
from corolla.message import Message


def ctx(node=1, **kw):
    return Context(node_id=node, **kw)


def test_decorated_handlers_dispatch_by_kind():
    app = ClientApp()

    @app.train
    def t(msg, c):
        return msg.reply(metrics={"kind": 1.0})

    @app.handler("secagg.share")
    def s(msg, c):
        return msg.reply(metrics={"kind": 2.0})

    assert app(Message.create("train", 1), ctx()).content.metrics["kind"] == 1.0
    assert app(Message.create("secagg.share", 1), ctx()).content.metrics["kind"] == 2.0
    with pytest.raises(ClientAppError, match="no handler for message kind 'evaluate'.*@app.evaluate"):
        app(Message.create("evaluate", 1), ctx())


def test_handler_must_return_message():
    app = ClientApp()

    @app.train()
    def t(msg, c):
        return {"oops": 1}

    with pytest.raises(ClientAppError, match="must return a Message"):
        app(Message.create("train", 1), ctx())


def test_mods_wrap_in_order():
    calls = []

    def mod_a(msg, c, nxt):
        calls.append("a-in")
        r = nxt(msg, c)
        calls.append("a-out")
        return r

    def mod_b(msg, c, nxt):
        calls.append("b-in")
        r = nxt(msg, c)
        r.content.metrics["b"] = 1.0
        return r

    app = ClientApp(mods=[mod_a, mod_b])

    @app.train
    def t(msg, c):
        calls.append("handler")
        return msg.reply()

    r = app(Message.create("train", 1), ctx())
    assert calls == ["a-in", "b-in", "handler", "a-out"]
    assert r.content.metrics["b"] == 1.0


def test_class_style_client():
    class C(Client):
        def __init__(self, c):
            self.c = c

        def fit(self, arrays, config):
            return Arrays({"w": arrays["w"] + config["step"]}), 5, {"train-loss": 0.5}

        def evaluate(self, arrays, config):
            return 0.25, 4, {"accuracy": 0.75}

    app = ClientApp.from_client(lambda c: C(c))
    w = Arrays({"w": np.zeros(2, np.float32)})
    r = app(Message.create("train", 1, arrays=w, config={"step": 1.0}), ctx())
    assert np.array_equal(r.content.arrays["w"], [1, 1])
    assert r.content.metrics == {"train-loss": 0.5, "num-examples": 5}
    r = app(Message.create("evaluate", 1, arrays=w), ctx())
    assert r.content.metrics == {"accuracy": 0.75, "loss": 0.25, "num-examples": 4}


def test_class_style_client_missing_method():
    app = ClientApp.from_client(lambda c: Client())
    with pytest.raises(ClientAppError, match="does not implement evaluate"):
        app(Message.create("evaluate", 1), ctx())


def test_context_rng_is_derived_not_global():
    a = ctx(node=3, seed=7, round=2).rng().random()
    b = ctx(node=3, seed=7, round=2).rng().random()
    c = ctx(node=4, seed=7, round=2).rng().random()
    d = ctx(node=3, seed=7, round=3).rng().random()
    assert a == b and len({a, c, d}) == 3
    assert ctx(node=3, node_config={"partition-id": 3, "num-partitions": 10}).num_partitions == 10
