"""FedBN / FedPer: arrays kept on the nodes, and the node helpers that keep them in ctx.state."""

import numpy as np
import pytest

from corolla import Arrays, ClientApp, Rounds, ServerApp, run_simulation
from corolla.client.context import Context
from corolla.store import Store
from corolla.strategies import SGD, Mean, StrategyError
from corolla.strategies.base import RoundCtx
from corolla.strategies.local_layers import FedBN, FedPer, is_local, restore_local, save_local, with_local
from corolla.strategies.strategy import Strategy

CTX = RoundCtx(round=1, seed=0, num_nodes=3)


def initial() -> Arrays:
    return Arrays(
        {
            "conv.w": np.zeros((3, 2), np.float32),
            "bn.mean": np.zeros(2, np.float32),
            "bn.var": np.ones(2, np.float32),
            "head.w": np.zeros(2, np.float32),
        }
    )


def test_fedbn_and_fedper_compositions():
    s = FedBN(min_train_nodes=3, fraction_evaluate=0.0, min_evaluate_nodes=0)
    assert dict(s.groups) == {"local": "*bn*", "model": "*"}
    assert s.aggregate == {"local": None, "model": Mean()} and s.optimizer == {"local": None, "model": SGD(1.0)}
    assert s.select.min_nodes == 3 and s.select_evaluate is None
    assert s.group_names(initial()) == {"local": ["bn.mean", "bn.var"], "model": ["conv.w", "head.w"]}
    p = FedPer()
    assert p.group_names(initial()) == {"local": ["head.w"], "model": ["conv.w", "bn.mean", "bn.var"]}
    both = FedBN(("bn.*", "head.*"))
    assert dict(both.groups) == {"local-0": "bn.*", "local-1": "head.*", "model": "*"}
    assert both.group_names(initial())["model"] == ["conv.w"]
    assert is_local("x.bn.y", "*bn*") and not is_local("conv.w", ("*bn*", "head.*"))
    with pytest.raises(StrategyError, match="fnmatch pattern"):
        FedBN(())
    with pytest.raises(StrategyError, match="already has group"):
        with_local(FedBN(), "head.*")


def test_with_local_keeps_per_group_parts_of_any_strategy():
    base = Strategy(
        groups={"scaffold": "scaffold/*", "model": "*"},
        aggregate={"scaffold": Mean(weighted=False), "model": Mean()},
        optimizer={"scaffold": SGD(0.5), "model": SGD(1.0)},
    )
    s = with_local(base, "bn.*")
    assert list(s.groups) == ["local", "scaffold", "model"]
    assert s.aggregate["local"] is None and s.aggregate["scaffold"] == Mean(weighted=False)
    assert s.optimizer["scaffold"] == SGD(0.5)


def test_local_group_is_neither_aggregated_nor_changed_on_the_server():
    s = FedBN(fraction_evaluate=0.0, min_evaluate_nodes=0)
    state = s.init(initial())
    assert set(state["aggregate"]) == {"model"}
    acc = s.open(state, CTX)
    for node in range(2):
        out = Arrays({k: v + (node + 1) for k, v in initial().items()})
        acc = s.add(acc, node, out, {"num-examples": 1}, CTX)
    new, _, _ = s.close(acc, CTX)
    p = new["params"]
    np.testing.assert_array_equal(p["bn.mean"], 0.0)
    np.testing.assert_array_equal(p["bn.var"], 1.0)
    np.testing.assert_allclose(p["conv.w"], 1.5)
    np.testing.assert_allclose(p["head.w"], 1.5)
    assert p["bn.mean"] is state["params"]["bn.mean"]


def test_restore_and_save_local_on_a_node():
    ctx = Context(node_id=4)
    received = initial()
    first = restore_local(ctx, received, "*bn*")
    assert all(first[k] is received[k] for k in received)  # first round: keeps what it received
    trained = Arrays({k: v + 2 for k, v in first.items()})
    save_local(ctx, trained, "*bn*")
    assert set(ctx.state["local-arrays"]) == {"bn.mean", "bn.var"}
    trained["bn.mean"][:] = 99  # the state holds copies
    np.testing.assert_array_equal(ctx.state["local-arrays"]["bn.mean"], 2.0)
    again = restore_local(ctx, received, "*bn*")
    np.testing.assert_array_equal(again["bn.mean"], 2.0)
    np.testing.assert_array_equal(again["bn.var"], 3.0)
    assert again["conv.w"] is received["conv.w"]
    again["bn.var"][:] = 7  # restored arrays are fresh copies
    np.testing.assert_array_equal(ctx.state["local-arrays"]["bn.var"], 3.0)
    changed = Arrays({**initial(), "bn.mean": np.zeros(5, np.float32)})
    with pytest.raises(ValueError, match="node 4 kept local array 'bn.mean' as float32\\[2\\] but received"):
        restore_local(ctx, changed, "*bn*")


def fedbn_app(log: list) -> ClientApp:
    """conv/head: +1 per round (the same on every node); bn.mean: node-specific drift of node+1."""
    app = ClientApp()

    @app.train
    def train(msg, ctx):
        arrays = restore_local(ctx, msg.content.arrays, "*bn*")
        log.append((ctx.round, ctx.node_id, arrays["bn.mean"].copy(), msg.content.arrays["bn.mean"].copy()))
        out = Arrays()
        for k, v in arrays.items():
            out[k] = v + np.float32(ctx.node_id + 1 if k == "bn.mean" else 1.0)
        save_local(ctx, out, "*bn*")
        return msg.reply(arrays=out, metrics={"num-examples": 1})

    @app.evaluate
    def evaluate(msg, ctx):
        arrays = restore_local(ctx, msg.content.arrays, "*bn*")
        return msg.reply(metrics={"num-examples": 1, "bn-mean": float(arrays["bn.mean"][0])})

    return app


def fedbn_server():
    return ServerApp(lambda ctx: Rounds(strategy=FedBN(min_train_nodes=3), initial_arrays=initial()))


def test_fedbn_end_to_end_inline(tmp_path):
    log: list = []
    h = run_simulation(
        fedbn_server(), fedbn_app(log), num_nodes=3, num_rounds=3, backend="inline", store=tmp_path / "store"
    )
    assert h.status == "completed" and [sorted(r.sampled) for r in h.rounds] == [[0, 1, 2]] * 3
    # the server's bn arrays never change; the model arrays do (mean of +1 per round)
    np.testing.assert_array_equal(h.arrays["bn.mean"], 0.0)
    np.testing.assert_array_equal(h.arrays["bn.var"], 1.0)
    np.testing.assert_allclose(h.arrays["conv.w"], 3.0)
    np.testing.assert_allclose(h.arrays["head.w"], 3.0)
    # each node trains from its own bn arrays, carried across rounds in ctx.state
    for rnd, node, used, received in log:
        np.testing.assert_array_equal(received, 0.0)
        np.testing.assert_array_equal(used, (rnd - 1) * (node + 1))
    assert len(log) == 9
    # federated evaluation after each round uses the nodes' own bn: mean over nodes of r * (node + 1)
    assert [r.evaluate["bn-mean"] for r in h.rounds] == pytest.approx([2.0, 4.0, 6.0])
    # and the node state is checkpointed as plain arrays
    st = Store(tmp_path / "store")
    last, saved = st.latest_checkpoint(h.run_id)
    assert last == 3
    for node in range(3):
        local = saved["nodes"][node]["local-arrays"]
        np.testing.assert_array_equal(local["bn.mean"], 3 * (node + 1))
        np.testing.assert_array_equal(local["bn.var"], 4.0)


def test_fedbn_end_to_end_process_backend():
    h = run_simulation(fedbn_server(), fedbn_app([]), num_nodes=3, num_rounds=2, backend="process", workers=2)
    np.testing.assert_array_equal(h.arrays["bn.mean"], 0.0)
    np.testing.assert_allclose(h.arrays["conv.w"], 2.0)
    assert h.rounds[-1].evaluate["bn-mean"] == pytest.approx(4.0)


def test_local_groups_work_with_stateful_transforms():
    # FedDyn's transform keeps state per array; arrays kept local must not be part of it
    import numpy as np

    from corolla import Arrays
    from corolla.strategies import FedDyn, RoundCtx, with_local

    s = with_local(FedDyn(), "bn")
    st = s.init(Arrays({"w": np.zeros(2), "bn": np.ones(2)}))
    ctx = RoundCtx(round=1, seed=0, num_nodes=2)
    acc = s.open(st, ctx)
    s.add(acc, 0, Arrays({"w": np.ones(2), "bn": np.full(2, 5.0)}), {"num-examples": 1}, ctx)
    s.add(acc, 1, Arrays({"w": np.ones(2), "bn": np.full(2, 7.0)}), {"num-examples": 1}, ctx)
    st, _, _ = s.close(acc, ctx)
    assert st["params"]["bn"].tolist() == [1.0, 1.0]
