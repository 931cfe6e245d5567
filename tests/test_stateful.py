"""Server-side math of SCAFFOLD, FedNova, FedDyn and Ditto against hand-computed values."""

import numpy as np
import pytest

from corolla import Arrays
from corolla.strategies import InvalidReply, RoundCtx, StrategyError, Update
from corolla.strategies.stateful import (
    SCAFFOLD,
    CohortFractionSGD,
    Ditto,
    FedDyn,
    FedNova,
    NormalizeBySteps,
    model_arrays,
    scaffold_arrays,
)


def ctx(r=1, n=4):
    return RoundCtx(round=r, seed=0, num_nodes=n)


def a(*v):
    return np.array(v, np.float64)


def round_(s, st, replies, r=1, n=4):
    """replies: [(node, {name: array}, metrics)] -> (new state, train metrics, server metrics)."""
    acc = s.open(st, ctx(r, n))
    for node, arrays, metrics in replies:
        s.add(acc, node, Arrays(arrays), metrics, ctx(r, n))
    return s.close(acc, ctx(r, n))


def test_scaffold_arrays_and_model_arrays():
    m = Arrays({"w": np.ones((2, 2), np.float32), "steps": np.array(3, np.int64)})
    full = scaffold_arrays(m)
    assert list(full) == ["w", "steps", "scaffold/w"]  # no control for the integer array
    assert full["scaffold/w"].dtype == np.float32 and not full["scaffold/w"].any()
    assert list(model_arrays(full)) == ["w", "steps"]
    with pytest.raises(ValueError, match="rename"):
        scaffold_arrays(Arrays({"scaffold/x": np.zeros(1)}))


def test_scaffold_two_rounds_hand_computed():
    # N = 4 nodes, |S| = 2 per round, eta_g = 0.5; both means unweighted (num-examples ignored)
    s = SCAFFOLD(eta_g=0.5, fraction_train=0.5, min_train_nodes=2)
    st = s.init(scaffold_arrays(Arrays({"x": a(1.0, 2.0)})))
    # round 1: x0 = [1, 2], c0 = [0, 0]
    #   dy = [1, 0], [-1, 2] -> mean [0, 1];  x1 = x0 + 0.5 * [0, 1] = [1, 2.5]
    #   dc = [0.5, -1], [1.5, 1] -> mean [1, 0];  c1 = c0 + 2/4 * [1, 0] = [0.5, 0]
    st, _, server = round_(
        s,
        st,
        [
            (0, {"x": a(2, 2), "scaffold/x": a(0.5, -1)}, {"num-examples": 1}),
            (1, {"x": a(0, 4), "scaffold/x": a(1.5, 1)}, {"num-examples": 3}),
        ],
    )
    np.testing.assert_allclose(st["params"]["x"], a(1, 2.5))
    np.testing.assert_allclose(st["params"]["scaffold/x"], a(0.5, 0))
    assert server["scaffold/server-lr"] == 0.5 and server["model/server-lr"] == 0.5
    # round 2: the nodes return c + dc_i
    #   dy = [2, 0], [0, -2] -> mean [1, -1];   x2 = [1, 2.5] + 0.5 * [1, -1] = [1.5, 2]
    #   dc = [0, 2], [-1, 0] -> mean [-0.5, 1]; c2 = [0.5, 0] + 0.5 * [-0.5, 1] = [0.25, 0.5]
    st, _, _ = round_(
        s,
        st,
        [
            (2, {"x": a(3, 2.5), "scaffold/x": a(0.5, 2)}, {"num-examples": 5}),
            (3, {"x": a(1, 0.5), "scaffold/x": a(-0.5, 0)}, {"num-examples": 1}),
        ],
        r=2,
    )
    np.testing.assert_allclose(st["params"]["x"], a(1.5, 2))
    np.testing.assert_allclose(st["params"]["scaffold/x"], a(0.25, 0.5))
    assert list(st["params"]) == ["x", "scaffold/x"]


def test_cohort_fraction_sgd_uses_selector_and_federation_size():
    from corolla.strategies import Uniform

    opt = CohortFractionSGD(Uniform(fraction=0.1, min_nodes=2), lr=2.0)
    out, _, m = opt.step({}, Arrays({"c": a(0.0)}), Arrays({"c": a(1.0)}), ctx(n=100))
    assert m["server-lr"] == pytest.approx(2.0 * 10 / 100) and out["c"][0] == pytest.approx(0.2)


def test_fednova_normalized_averaging_hand_computed():
    s = FedNova()
    st = s.init(Arrays({"x": a(0, 0)}))
    # node 0: n=1, tau=2, y=[2, 4] -> d=[1, 2];  node 1: n=3, tau=4, y=[4, 0] -> d=[1, 0]
    # p = [1/4, 3/4]: sum p d = [1, 0.5];  tau_eff = (1*2 + 3*4)/4 = 3.5;  x = 3.5 * [1, 0.5]
    st, train, server = round_(
        s,
        st,
        [
            (0, {"x": a(2, 4)}, {"num-examples": 1, "local-steps": 2}),
            (1, {"x": a(4, 0)}, {"num-examples": 3, "local-steps": 4}),
        ],
    )
    np.testing.assert_allclose(st["params"]["x"], a(3.5, 1.75))
    assert server["tau-eff"] == pytest.approx(3.5) and server["side/tau"] == pytest.approx(14.0)
    assert train["local-steps"] == pytest.approx(3.5)
    # FedAvg would give (1*[2, 4] + 3*[4, 0]) / 4 = [3.5, 1]: equal taus make the two agree
    st2, _, _ = round_(
        s,
        s.init(Arrays({"x": a(0, 0)})),
        [
            (0, {"x": a(2, 4)}, {"num-examples": 1, "local-steps": 3}),
            (1, {"x": a(4, 0)}, {"num-examples": 3, "local-steps": 3}),
        ],
    )
    np.testing.assert_allclose(st2["params"]["x"], a(3.5, 1))


def test_fednova_needs_local_steps():
    s = FedNova()
    st = s.init(Arrays({"x": a(0.0)}))
    acc = s.open(st, ctx())
    for bad in ({"num-examples": 1}, {"num-examples": 1, "local-steps": 0}):
        with pytest.raises(InvalidReply, match="local-steps"):
            s.add(acc, 0, Arrays({"x": a(1.0)}), bad, ctx())
    u = Update(0, Arrays({"x": a(4.0)}), Arrays({"x": a(2.0)}), 1.0, {"local-steps": 2})
    u = NormalizeBySteps().per_update({}, u, ctx())  # 2 + (4 - 2) / 2
    assert u.arrays["x"][0] == 3.0 and u.side == {"tau": 2.0}


def test_feddyn_h_and_model_hand_computed():
    # alpha = 0.5, m = N = 4, |P| = 2 per round
    s = FedDyn(alpha=0.5, fraction_train=0.5)
    st = s.init(Arrays({"x": a(0, 0)}))
    assert s.node_config == {"feddyn-alpha": 0.5}
    # round 1: theta = [2, 0], [0, 4]; sum of deltas [2, 4]
    #   h1 = 0 - 0.5 * (1/4) * [2, 4] = [-0.25, -0.5];  x1 = mean [1, 2] - h1/0.5 = [1.5, 3]
    st, _, server = round_(s, st, [(0, {"x": a(2, 0)}, {"num-examples": 1}), (1, {"x": a(0, 4)}, {"num-examples": 9})])
    np.testing.assert_allclose(st["transforms"]["feddyn"]["h"]["x"], a(-0.25, -0.5))
    np.testing.assert_allclose(st["params"]["x"], a(1.5, 3))
    assert server["feddyn/h-norm"] == pytest.approx(np.hypot(0.25, 0.5))
    # round 2: theta = [1.5, 3] (no change), [3.5, 3]; sum of deltas [2, 0]
    #   h2 = h1 - 0.125 * [2, 0] = [-0.5, -0.5];  x2 = mean [2.5, 3] - h2/0.5 = [3.5, 4]
    st, _, _ = round_(
        s, st, [(2, {"x": a(1.5, 3)}, {"num-examples": 1}), (3, {"x": a(3.5, 3)}, {"num-examples": 1})], r=2
    )
    np.testing.assert_allclose(st["transforms"]["feddyn"]["h"]["x"], a(-0.5, -0.5))
    np.testing.assert_allclose(st["params"]["x"], a(3.5, 4))


def test_feddyn_keeps_dtype_and_rejects_bad_alpha():
    s = FedDyn(alpha=0.1, fraction_train=1.0)
    st = s.init(Arrays({"x": np.zeros(2, np.float32)}))
    st, _, _ = round_(s, st, [(0, {"x": np.ones(2, np.float32)}, {}), (1, {"x": np.ones(2, np.float32)}, {})], n=2)
    assert st["params"]["x"].dtype == np.float32
    # |P| = N: h = -0.1 * [1, 1];  x = 1 + 1 = 2
    np.testing.assert_allclose(st["params"]["x"], [2, 2])
    with pytest.raises(StrategyError, match="alpha"):
        FedDyn(alpha=0.0)


def test_ditto_server_is_fedavg_with_lambda():
    s = Ditto(lam=0.3, node_config={"epochs": 2})
    assert s.node_config == {"ditto-lambda": 0.3, "epochs": 2}
    st = s.init(Arrays({"x": a(0.0)}))
    st, _, _ = round_(s, st, [(0, {"x": a(1.0)}, {"num-examples": 1}), (1, {"x": a(4.0)}, {"num-examples": 3})])
    assert st["params"]["x"][0] == pytest.approx(3.25)
    nodes, config, _ = s.configure_train(st, range(4), ctx())
    assert config["ditto-lambda"] == 0.3


# -- end to end: the fixed points the papers are about ------------------------------------

TARGETS = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 4.0]])  # node k minimizes ||w - b_k||^2 / 2
LR = 0.01


def steps_of(k):
    return 1 + 9 * k  # heterogeneous local work: 1, 10, 19, 28 steps


def gd_app():
    from corolla import ClientApp

    app = ClientApp()

    @app.train
    def train(msg, ctx):
        k = ctx.node_id
        w = msg.content.arrays["w"].copy()
        for _ in range(steps_of(k)):
            w -= LR * (w - TARGETS[k])
        return msg.reply(arrays=Arrays({"w": w}), metrics={"num-examples": 10, "local-steps": steps_of(k)})

    return app


def test_fednova_removes_objective_inconsistency():
    """Wang et al. 2020: with unequal local steps, FedAvg converges to the optimum of a surrogate that
    weights node k by a_k = 1 - (1 - lr)^tau_k; FedNova's weights a_k / tau_k are almost uniform."""
    from corolla import FedAvg, Rounds, ServerApp, run_simulation

    a = np.array([1 - (1 - LR) ** steps_of(k) for k in range(4)])
    predicted = {
        "FedAvg": (a[:, None] * TARGETS).sum(0) / a.sum(),
        "FedNova": ((a / [steps_of(k) for k in range(4)])[:, None] * TARGETS).sum(0)
        / (a / [steps_of(k) for k in range(4)]).sum(),
    }
    found = {}
    for name, make in (("FedAvg", FedAvg), ("FedNova", FedNova)):

        def server(ctx, make=make):
            s = make(fraction_evaluate=0, min_evaluate_nodes=0)
            return Rounds(strategy=s, initial_arrays=Arrays({"w": np.zeros(2)}))

        h = run_simulation(ServerApp(server), gd_app(), num_nodes=4, num_rounds=150, backend="inline")
        found[name] = h.arrays["w"]
        np.testing.assert_allclose(found[name], predicted[name], atol=1e-3)
    optimum = TARGETS.mean(0)  # the true minimizer of the mean objective
    assert np.linalg.norm(found["FedNova"] - optimum) < 0.1 * np.linalg.norm(found["FedAvg"] - optimum)


def _load_benchmark(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fedprox_stragglers_small():
    """A small fedprox_stragglers run (6 rounds, E = 10, 90 % stragglers). FedProx (mu=1) keeps the
    stragglers' partial work and has a lower training loss than FedAvg, which drops them. The gap
    was >= 25 % on each of data/run seeds 0-7. Seed 5 is used here because it is the fastest."""
    fp = _load_benchmark("fedprox_stragglers")
    kw = dict(rounds=6, seed=5, data_seed=5, backend="inline", epochs=10)
    avg = fp.run_one("FedAvg", 0.9, **kw)
    prox = fp.run_one("FedProx (mu=1)", 0.9, **kw)
    assert len(avg["train_loss"]) == len(prox["accuracy"]) == 7  # round 0 (initial model) + 6
    assert np.mean(prox["train_loss"][1:]) < 0.8 * np.mean(avg["train_loss"][1:])
    assert prox["accuracy"][-1] > avg["accuracy"][-1]
    rows = fp.summarize([avg, prox], last=3)
    assert "| 90% | FedAvg |" in fp.markdown(rows, last=3)


@pytest.mark.parametrize("make, key, arg", [(FedDyn, "feddyn-alpha", "alpha"), (Ditto, "ditto-lambda", "lam")])
def test_own_node_config_keys_cannot_be_overridden(make, key, arg):
    with pytest.raises(StrategyError, match=f"pass {arg}="):
        make(node_config={key: 1.0})
