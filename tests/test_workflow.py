"""The round workflow on the inline grid (same process, deterministic)."""

import logging

import numpy as np
import pytest

from conftest import initial_arrays, noise_app, simple_server
from corolla import Arrays, ClientApp, FedAvg, Rounds, ServerApp, run_simulation
from corolla.strategies import StrategyError
from corolla.workflows import RoundFailed


def run(app, server=None, nodes=5, rounds=3, **kw):
    return run_simulation(server or simple_server(), app, num_nodes=nodes, num_rounds=rounds, backend="inline", **kw)


def test_rounds_complete_and_history_records_everything():
    h = run(noise_app(), nodes=5, rounds=3)
    assert h.status == "completed" and [r.round for r in h.rounds] == [1, 2, 3]
    r = h.rounds[0]
    assert sorted(r.sampled) == [0, 1, 2, 3, 4] and sorted(r.replied) == [0, 1, 2, 3, 4]
    # weighted mean of node losses (node i reports loss i with weight i+1)
    assert r.train["loss"] == pytest.approx(sum(i * (i + 1) for i in range(5)) / 15)
    assert "loss" in r.evaluate and r.seconds > 0
    assert h.arrays["w"].shape == (4, 3) and h.arrays["w"].dtype == np.float32


def test_same_seed_same_arrays_different_seed_differs():
    a = run(noise_app(), seed=1).arrays_sha256
    b = run(noise_app(), seed=1).arrays_sha256
    c = run(noise_app(), seed=2).arrays_sha256
    assert a == b != c


def test_failing_node_round_completes_and_error_recorded(caplog):
    with caplog.at_level(logging.WARNING, logger="corolla"):
        h = run(noise_app(fail_nodes=(2,), fail_round=2), nodes=4, rounds=3)
    r2 = h.rounds[1]
    assert 2 not in r2.replied and len(r2.replied) == 3
    (f,) = [f for f in r2.failures if f.kind == "train"]
    assert f.node == 2 and "boom on node 2" in f.error and "Traceback" in f.error
    assert "boom on node 2" in caplog.text
    assert 2 in h.rounds[2].replied  # the node is back next round


def test_too_few_replies_fails_clearly():
    def server(ctx):
        return Rounds(strategy=FedAvg(), initial_arrays=initial_arrays(), min_replies=4)

    with pytest.raises(RoundFailed, match=r"round 1: 3 of 4 sampled nodes replied successfully, 4 needed.*boom"):
        run(noise_app(fail_nodes=(1,)), server=ServerApp(server), nodes=4)


def test_wrong_shape_reply_becomes_node_failure():
    h = run(noise_app(bad_shape_nodes=(0,)), nodes=3, rounds=1)
    (f,) = [f for f in h.rounds[0].failures if f.kind == "train"]
    assert f.node == 0 and "invalid-reply" in f.error and "same dtype and shape" in f.error


def test_all_replies_wrong_shape_fails_naming_fix():
    with pytest.raises(RoundFailed, match="same dtype and shape"):
        run(noise_app(bad_shape_nodes=(0, 1, 2)), nodes=3, rounds=1)


def test_min_nodes_larger_than_federation_fails_fast():
    with pytest.raises(StrategyError, match="--nodes 10"):
        run(noise_app(), server=simple_server(min_nodes=10), nodes=3)


def test_handler_cannot_modify_global_arrays_in_place():
    app = ClientApp()

    @app.train
    def t(msg, ctx):
        msg.content.arrays["w"] += 1
        return msg.reply(arrays=msg.content.arrays, metrics={"num-examples": 1})

    with pytest.raises(RoundFailed, match="read-only"):
        run(app, nodes=2, rounds=1)


def test_node_state_persists_across_rounds():
    app = ClientApp()

    @app.train
    def t(msg, ctx):
        ctx.state["n"] = ctx.state.get("n", 0) + 1
        return msg.reply(arrays=msg.content.arrays, metrics={"num-examples": 1, "n": ctx.state["n"]})

    h = run(
        app,
        server=ServerApp(lambda c: Rounds(FedAvg(fraction_evaluate=0, min_evaluate_nodes=0), initial_arrays())),
        nodes=2,
        rounds=3,
    )
    assert [r.train["n"] for r in h.rounds] == [1, 2, 3]


def test_centralized_evaluate_and_config_fn():
    seen = []
    app = ClientApp()

    @app.train
    def t(msg, ctx):
        seen.append(msg.content.config["lr"])
        return msg.reply(arrays=msg.content.arrays, metrics={"num-examples": 1})

    def server(ctx):
        return Rounds(
            strategy=FedAvg(fraction_evaluate=0, min_evaluate_nodes=0),
            initial_arrays=initial_arrays(),
            evaluate_fn=lambda rnd, arrays: (float(rnd), {"acc": 1.0}),
            train_config=lambda rnd: {"lr": 0.1 * rnd},
        )

    h = run(app, server=ServerApp(server), nodes=2, rounds=2)
    assert [r.round for r in h.rounds] == [0, 1, 2]  # round 0: the initial arrays
    assert h.rounds[2].server["loss"] == 2.0 and h.rounds[2].server["acc"] == 1.0
    assert seen == [0.1, 0.1, pytest.approx(0.2), pytest.approx(0.2)]


def test_slow_node_times_out_inline():
    import time

    app = ClientApp()

    @app.train
    def t(msg, ctx):
        time.sleep(0.3)
        return msg.reply(arrays=msg.content.arrays, metrics={"num-examples": 1})

    server = ServerApp(
        lambda c: Rounds(
            FedAvg(min_train_nodes=3, fraction_evaluate=0, min_evaluate_nodes=0), initial_arrays(), round_timeout=0.5
        )
    )
    h = run(app, server=server, nodes=3, rounds=1)
    assert len(h.rounds[0].replied) == 2
    assert h.rounds[0].failures[0].error.startswith("timeout")


def test_min_replies_above_cohort_fails_before_round_one():
    def server(ctx):
        return Rounds(strategy=FedAvg(fraction_train=0.5), initial_arrays=initial_arrays(), min_replies=5)

    with pytest.raises(ValueError, match="min_replies=5 exceeds the 2 nodes sampled per round"):
        run(noise_app(), server=ServerApp(server), nodes=4)


def test_inline_replies_that_reuse_one_buffer_are_not_mixed_up():
    shared = {"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)}
    app = ClientApp()

    @app.train
    def t(msg, ctx):  # returns views of one model reused by every node, as module-level nets do
        for k, v in msg.content.arrays.items():
            shared[k][...] = v + ctx.node_id
        return msg.reply(arrays=Arrays(shared), metrics={"num-examples": 1})

    server = ServerApp(lambda c: Rounds(FedAvg(fraction_evaluate=0, min_evaluate_nodes=0), initial_arrays()))
    h = run(app, server=server, nodes=4, rounds=1)
    assert np.all(h.arrays["w"] == 1.5)  # mean of node ids 0..3
