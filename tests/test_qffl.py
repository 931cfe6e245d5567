"""q-FFL / QFedAvg: hand-computed values, Flower's formula, errors."""

from __future__ import annotations

import numpy as np
import pytest

from corolla import Arrays
from corolla.strategies import SGD, InvalidReply, Mean, RoundCtx, StrategyError, Update
from corolla.strategies.qffl import LOSS_EPS, QFFL, QFedAvg


def ctx(r=1):
    return RoundCtx(round=r, seed=0, num_nodes=10)


def run_round(strategy, base, replies, r=1):
    """replies: [(node, arrays, metrics)] -> new params."""
    st = strategy.init(base)
    acc = strategy.open(st, ctx(r))
    for node, arrays, metrics in replies:
        strategy.add(acc, node, arrays, metrics, ctx(r))
    st, train, server = strategy.close(acc, ctx(r))
    return st["params"], train, server


def test_hand_computed_q1():
    # L = 1 / 0.5 = 2, q = 1
    # A: g = 2 * ([1, 2] - [0, 2]) = [2, 0], ||g||^2 = 4, loss 1:  Delta = [2, 0],   h = 4 + 2 * 1 = 6
    # B: g = 2 * ([1, 2] - [1, 4]) = [0, -4], ||g||^2 = 16, loss 4: Delta = [0, -16], h = 16 + 2 * 4 = 24
    # new = [1, 2] - [2, -16] / 30
    s = QFedAvg(client_learning_rate=0.5, q=1.0, fraction_evaluate=0, min_evaluate_nodes=0)
    base = Arrays({"w": np.array([1.0, 2.0])})
    new, _, _ = run_round(s, base, [
        (1, Arrays({"w": np.array([0.0, 2.0])}), {"num-examples": 10, "train-loss": 1.0}),
        (2, Arrays({"w": np.array([1.0, 4.0])}), {"num-examples": 99, "train-loss": 4.0}),
    ])
    np.testing.assert_allclose(new["w"], [1 - 2 / 30, 2 + 16 / 30], rtol=1e-9)


def test_q0_is_the_unweighted_mean_of_the_models():
    s = QFedAvg(client_learning_rate=0.1, q=0.0)
    base = Arrays({"w": np.zeros(3, np.float32)})
    rows = [np.array([1, 2, 3], np.float32), np.array([3, 2, 1], np.float32), np.array([2, 8, 5], np.float32)]
    new, _, _ = run_round(s, base, [
        (i, Arrays({"w": w}), {"num-examples": 10 ** i, "train-loss": float(i + 1)}) for i, w in enumerate(rows)
    ])
    np.testing.assert_allclose(new["w"], np.mean(rows, axis=0), rtol=1e-6)
    assert new["w"].dtype == np.float32  # the model keeps its dtype


def flower_qfedavg(global_weights, local_weights, losses, q, client_lr):
    """Flower 1.42's QFedAvg.aggregate_train arithmetic (compute_delta_and_h), in float64."""
    L = 1.0 / client_lr
    sum_delta, sum_h = None, 0.0
    for lw, loss in zip(local_weights, losses):
        grad = [L * (g - w) for g, w in zip(global_weights, lw)]
        norm = float(sum(np.sum(np.square(g)) for g in grad))
        lq = np.float_power(loss + 1e-10, q)
        delta = [g * lq for g in grad]
        h = q * np.float_power(loss + 1e-10, q - 1) * norm + L * lq
        sum_delta = delta if sum_delta is None else [a + b for a, b in zip(sum_delta, delta)]
        sum_h += h
    return [g - d / sum_h for g, d in zip(global_weights, sum_delta)]


@pytest.mark.parametrize("q,lr", [(0.1, 0.1), (1.0, 0.01), (2.5, 0.3), (0.0, 1.0)])
def test_matches_flowers_formula(q, lr):
    rng = np.random.default_rng(int(q * 10))
    base = Arrays({"a": rng.normal(size=(4, 3)), "b": rng.normal(size=5)})
    locals_ = [Arrays({k: v + rng.normal(0, 0.1, v.shape) for k, v in base.items()}) for _ in range(6)]
    losses = list(rng.uniform(0.0, 3.0, size=6))
    losses[0] = 0.0  # + 1e-10 keeps F^(q-1) finite
    ref = flower_qfedavg(list(base.values()), [list(x.values()) for x in locals_], losses, q, lr)
    s = QFedAvg(client_learning_rate=lr, q=q, loss_key="train_loss")
    new, _, _ = run_round(s, base, [
        (i, x, {"num-examples": 1, "train_loss": f}) for i, (x, f) in enumerate(zip(locals_, losses))
    ])
    for k, r in zip(base, ref):
        np.testing.assert_allclose(new[k], r, rtol=1e-12, atol=1e-12)


def test_transform_value_and_weight():
    t = QFFL(client_learning_rate=0.5, q=1.0)
    base = Arrays({"w": np.array([1.0, 2.0], np.float32)})
    u = Update(node=1, arrays=Arrays({"w": np.array([0.0, 2.0], np.float32)}), base=base, weight=10.0,
               metrics={"train-loss": 1.0})
    v = t.per_update({}, u, ctx())
    assert v.weight == pytest.approx(6.0)  # h_k
    np.testing.assert_allclose(v.arrays["w"], [1.0 - 2.0 / 6.0, 2.0])  # base - Delta_k / h_k
    assert u.weight == 10.0 and u.arrays["w"][0] == 0.0  # never mutated
    assert LOSS_EPS == 1e-10


def test_composition_and_defaults():
    s = QFedAvg(0.1)
    assert [t.name for t in s.transforms] == ["qffl"]
    assert s.transforms[0].q == 0.1 and s.transforms[0].loss_key == "train-loss"
    assert s.aggregate == Mean() and s.optimizer == SGD(1.0)


def test_missing_or_bad_loss_names_the_key():
    s = QFedAvg(0.1)
    base = Arrays({"w": np.zeros(2)})
    with pytest.raises(InvalidReply, match=r"no 'train-loss' \(they have: loss, num-examples\).*loss_key"):
        run_round(s, base, [(1, Arrays({"w": np.ones(2)}), {"num-examples": 1, "loss": 0.3})])
    with pytest.raises(InvalidReply, match="finite loss >= 0"):
        run_round(s, base, [(1, Arrays({"w": np.ones(2)}), {"num-examples": 1, "train-loss": -1.0})])
    with pytest.raises(StrategyError, match="client_learning_rate must be > 0"):
        QFFL(0.0)
    with pytest.raises(StrategyError, match="q must be >= 0"):
        QFFL(0.1, q=-1)


def test_q_schedule():
    t = QFFL(client_learning_rate=1.0, q=lambda r: 0.0 if r == 1 else 1.0)
    base = Arrays({"w": np.zeros(1)})
    u = Update(node=1, arrays=Arrays({"w": np.ones(1)}), base=base, weight=1.0, metrics={"train-loss": 2.0})
    assert t.per_update({}, u, ctx(1)).weight == pytest.approx(1.0)  # q=0: h = L
    assert t.per_update({}, u, ctx(2)).weight == pytest.approx(1.0 + 2.0)  # q=1: ||g||^2 + L * F
