"""Server optimizers against hand-worked numbers; state checkpointing; dtypes; the named strategies.

`update` is the aggregate the nodes propose (mean - x), so a step moves *along* it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from corolla import Arrays
from corolla.store.state_io import flatten_state, unflatten_state
from corolla.strategies import RoundCtx, StrategyError
from corolla.strategies.named import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedProx, FedYogi
from corolla.strategies.server_optimizers import SGD, Adagrad, Adam, Momentum, Yogi


def ctx(r: int = 1) -> RoundCtx:
    return RoundCtx(round=r, seed=0, num_nodes=4)


def A(**arrays) -> Arrays:
    return Arrays((k, np.asarray(v, np.float64)) for k, v in arrays.items())


def run(opt, x0, updates, rounds=None):
    """Step `opt` through `updates` (lists); return the arrays after each step and the last state/metrics."""
    params, state = A(x=x0), opt.init(A(x=x0))
    outs, metrics = [], []
    for i, u in enumerate(updates):
        params, state, m = opt.step(state, params, A(x=u), ctx(rounds[i] if rounds else i + 1))
        outs.append(params["x"].copy())
        metrics.append(m)
    return outs, state, metrics


def close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-15)


# -- hand-worked steps -------------------------------------------------------------------------


def test_sgd():
    outs, state, m = run(SGD(lr=0.5), [1.0, -2.0], [[2.0, 4.0], [-2.0, 0.0]])
    close(outs[0], [2.0, 0.0])  # x + 0.5 * u
    close(outs[1], [1.0, 0.0])
    assert state == {} and m[0] == {"server-lr": 0.5}


def test_momentum_torch_matches_flower_fedavgm_convention():
    # Flower: g = x - mean = -u; b1 = g; b = mu*b + g; x - lr*b.  Here in update terms, lr .5, mu .9:
    # u1 = 2:  b = 2             x = 1 + .5*2    = 2
    # u2 = -1: b = .9*2 - 1 = .8  x = 2 + .5*.8   = 2.4
    # u3 = 4:  b = .72 + 4 = 4.72 x = 2.4 + 2.36 = 4.76
    outs, state, m = run(Momentum(lr=0.5, momentum=0.9), [1.0], [[2.0], [-1.0], [4.0]])
    close(np.concatenate(outs), [2.0, 2.4, 4.76])
    close(state["trace"]["x"], [4.72])
    assert state["count"] == 3 and m[0] == {"server-lr": 0.5, "server-momentum": 0.9}


def test_momentum_nesterov_and_ema():
    # nesterov (torch): step along mu*b + u.  u1 = 2: b = 2, dir = 1.8 + 2 = 3.8, x = 1 + .5*3.8 = 2.9
    #                                         u2 = -1: b = .8, dir = .72 - 1 = -.28, x = 2.9 - .14 = 2.76
    outs, _, _ = run(Momentum(lr=0.5, momentum=0.9, nesterov=True), [1.0], [[2.0], [-1.0]])
    close(np.concatenate(outs), [2.9, 2.76])
    # ema, mu .5, lr 1: b = .5*b + .5*u.  u1 = 2: b = 1, x = 2;  u2 = -1: b = 0, x = 2;  u3 = 4: b = 2, x = 4
    outs, _, _ = run(Momentum(lr=1.0, momentum=0.5, variant="ema"), [1.0], [[2.0], [-1.0], [4.0]])
    close(np.concatenate(outs), [2.0, 2.0, 4.0])
    # momentum 0 is SGD(lr)
    outs, _, _ = run(Momentum(lr=0.5), [1.0], [[2.0], [-1.0]])
    close(np.concatenate(outs), [2.0, 1.5])


def test_adam_flwr_bias_correction_uses_round_plus_one():
    # lr .1, b1 .9, b2 .99, tau 1e-3; x0 = [0, 1]
    # step 1, u = [1, -2]: m = .1u = [.1, -.2]; v = .01u^2 = [.01, .04]; sqrt v = [.1, .2]
    #   lr_1 = .1 * sqrt(1 - .99^2) / (1 - .9^2) = .1 * sqrt(.0199) / .19 ~= .0742460  (exponent 2, not 1)
    #   x1 = [0 + lr_1 * .1/.101, 1 - lr_1 * .2/.201] ~= [.0735109, .9261233]
    # step 2, u = [1, 0]: m = [.09 + .1, -.18] = [.19, -.18]; v = [.0099 + .01, .0396] = [.0199, .0396]
    #   lr_2 = .1 * sqrt(1 - .99^3) / (1 - .9^3) = .1 * sqrt(.029701) / .271 ~= .0635954
    outs, state, m = run(Adam(lr=0.1, b1=0.9, b2=0.99, eps=1e-3), [0.0, 1.0], [[1.0, -2.0], [1.0, 0.0]])
    lr1 = 0.1 * math.sqrt(0.0199) / 0.19
    lr2 = 0.1 * math.sqrt(0.029701) / 0.271
    x1 = np.array([lr1 * 0.1 / 0.101, 1 - lr1 * 0.2 / 0.201])
    close(outs[0], x1)
    close(outs[1], x1 + lr2 * np.array([0.19, -0.18]) / (np.sqrt([0.0199, 0.0396]) + 1e-3))
    assert m[0]["server-lr"] == pytest.approx(lr1, rel=1e-15) and m[1]["server-lr"] == pytest.approx(lr2, rel=1e-15)
    close(state["m"]["x"], [0.19, -0.18])
    close(state["v"]["x"], [0.0199, 0.0396])
    assert state["count"] == 2


def test_adam_optax_variant():
    # m_hat = m/(1 - b1^t), v_hat = v/(1 - b2^t): at step 1 m_hat = u, v_hat = u^2, so
    # x1 = x0 + lr * u / (|u| + eps) = [.1 * 1/1.001, 1 - .1 * 2/2.001]
    # step 2, u = [1, 0]: m_hat = [.19, -.18]/.19, v_hat = [.0199, .0396]/.0199
    outs, _, m = run(Adam(lr=0.1, variant="optax"), [0.0, 1.0], [[1.0, -2.0], [1.0, 0.0]])
    x1 = np.array([0.1 / 1.001, 1 - 0.2 / 2.001])
    close(outs[0], x1)
    close(outs[1], x1 + 0.1 * (np.array([0.19, -0.18]) / 0.19) / (np.sqrt(np.array([0.0199, 0.0396]) / 0.0199) + 1e-3))
    assert m[0]["server-lr"] == pytest.approx(0.1 * math.sqrt(0.01) / 0.1)


def test_yogi_sign_rule_no_bias_correction():
    # lr .1, b1 .9, b2 .99, tau 1e-3; x0 = [0, 1]
    # step 1, u = [1, -2]:   v = 0 - .01*u^2*sign(0 - u^2) = [.01, .04];  m = [.1, -.2]
    # step 2, u = [.5, 0]:   d2 = [.25, 0]: v = [.01 + .01*.25, .04 - 0] = [.0125, .04] (v < d2: v grows)
    #                        m = [.09 + .05, -.18] = [.14, -.18]
    # step 3, u = [.05, .1]: d2 = [.0025, .01]: v = [.0125 - .000025, .04 - .0001] = [.012475, .0399] (v > d2: shrinks)
    #                        m = [.126 + .005, -.162 + .01] = [.131, -.152]
    outs, state, m = run(Yogi(lr=0.1), [0.0, 1.0], [[1.0, -2.0], [0.5, 0.0], [0.05, 0.1]])
    x1 = np.array([0.1 * 0.1 / 0.101, 1 - 0.1 * 0.2 / 0.201])
    x2 = x1 + 0.1 * np.array([0.14, -0.18]) / (np.sqrt([0.0125, 0.04]) + 1e-3)
    x3 = x2 + 0.1 * np.array([0.131, -0.152]) / (np.sqrt([0.012475, 0.0399]) + 1e-3)
    close(outs[0], x1)
    close(outs[1], x2)
    close(outs[2], x3)
    close(state["v"]["x"], [0.012475, 0.0399])
    assert m[2] == {"server-lr": 0.1}


def test_adagrad_accumulates_and_b1_zero_means_m_is_the_update():
    # lr .1, tau 1e-3: u1 = [1, -2]: v = [1, 4], x1 = [.1*1/1.001, 1 - .1*2/2.001]
    #                  u2 = [3, 0]:  v = [10, 4], x2 = x1 + [.1*3/(sqrt 10 + .001), 0]
    outs, state, _ = run(Adagrad(lr=0.1), [0.0, 1.0], [[1.0, -2.0], [3.0, 0.0]])
    x1 = np.array([0.1 / 1.001, 1 - 0.2 / 2.001])
    close(outs[0], x1)
    close(outs[1], x1 + np.array([0.3 / (math.sqrt(10) + 1e-3), 0.0]))
    close(state["v"]["x"], [10.0, 4.0])
    close(state["m"]["x"], [3.0, 0.0])
    # with b1 = .5 and v0 = 1: m = .5u = [.5], v = 1 + 1 = 2, x = 0 + .1*.5/(sqrt 2 + .001)
    outs, _, _ = run(Adagrad(lr=0.1, b1=0.5, initial_accumulator=1.0), [0.0], [[1.0]])
    close(outs[0], [0.05 / (math.sqrt(2) + 1e-3)])


# -- schedules and validation -------------------------------------------------------------------


def test_schedules_resolve_with_the_round_and_lr_is_reported():
    outs, _, m = run(Momentum(lr=lambda r: 1.0 / r, momentum=lambda r: 0.0 if r < 3 else 0.5), [0.0], [[1.0]] * 3)
    # r1: b = 1, x = 1;  r2: lr .5, b = 1, x = 1.5;  r3: lr 1/3, mu .5: b = .5 + 1 = 1.5, x = 1.5 + .5 = 2
    close(np.concatenate(outs), [1.0, 1.5, 2.0])
    assert [mm["server-lr"] for mm in m] == [1.0, 0.5, 1.0 / 3]
    # Adam's reported lr is the bias-corrected one for the scheduled lr
    _, _, m = run(Adam(lr=lambda r: 0.1 * r), [0.0], [[1.0]] * 2, rounds=[2, 5])
    assert m[1]["server-lr"] == pytest.approx(0.5 * math.sqrt(1 - 0.99**3) / (1 - 0.9**3))
    # Yogi's b1 schedule: round 1 b1 = 0 -> m = u
    _, state, _ = run(Yogi(b1=lambda r: 0.0 if r == 1 else 0.9), [0.0], [[2.0]])
    close(state["m"]["x"], [2.0])


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Adam(b1=1.0), r"Adam.b1 must be in \[0, 1\)"),
        (lambda: Adam(eps=0.0), r"Adam.eps must be in \(0, inf\]"),
        (lambda: Adam(variant="torch"), r"variant must be one of \['flwr', 'optax'\]"),
        (lambda: Momentum(momentum=-0.1), r"Momentum.momentum must be in \[0, 1\]"),
        (lambda: Momentum(variant="flwr"), "variant must be one of"),
        (lambda: SGD(lr=float("nan")), "SGD.lr must be"),
        (lambda: Yogi(b2="x"), "must be a number"),
        (lambda: Adagrad(initial_accumulator=-1.0), "initial_accumulator"),
    ],
)
def test_bad_constants_refused(make, match):
    with pytest.raises(StrategyError, match=match):
        make()


def test_bad_scheduled_value_refused_at_step():
    with pytest.raises(StrategyError, match=r"Yogi.b2 must be in \[0, 1\), got 1.5"):
        run(Yogi(b2=lambda r: 1.5), [0.0], [[1.0]])


# -- state is checkpointable ----------------------------------------------------------------------

OPTIMIZERS = [
    SGD(lr=0.7),
    Momentum(lr=0.7, momentum=0.9),
    Momentum(lr=0.7, momentum=0.5, nesterov=True, variant="ema"),
    Adam(),
    Adam(variant="optax"),
    Yogi(lr=0.1),
    Adagrad(initial_accumulator=1e-6),
]


def _plain_data(x) -> bool:
    if isinstance(x, (Arrays, dict)):
        return all(isinstance(k, str) and _plain_data(v) for k, v in x.items())
    return isinstance(x, (np.ndarray, int, float)) and not isinstance(x, bool)


@pytest.mark.parametrize("opt", OPTIMIZERS, ids=lambda o: type(o).__name__)
def test_state_round_trips_and_resumes_identically(opt):
    rng = np.random.default_rng(0)
    params = Arrays({"w": rng.normal(size=(3, 2)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32)})
    updates = [Arrays((k, rng.normal(size=v.shape).astype(np.float32)) for k, v in params.items()) for _ in range(4)]
    state = opt.init(params)
    for r in (1, 2):
        params, state, _ = opt.step(state, params, updates[r - 1], ctx(r))
    assert _plain_data(state)
    tensors, meta = flatten_state({"optimizer": state})
    restored = unflatten_state({k: v.copy() for k, v in tensors.items()}, meta)["optimizer"]
    a = b = params
    sa, sb = state, restored
    for r in (3, 4):
        a, sa, ma = opt.step(sa, a, updates[r - 1], ctx(r))
        b, sb, mb = opt.step(sb, b, updates[r - 1], ctx(r))
        assert ma == mb
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert flatten_state(sa)[1] == flatten_state(sb)[1]


def test_step_does_not_mutate_its_inputs():
    opt = Adam()
    params = A(x=[0.0, 1.0])
    state = opt.init(params)
    params2, state2, _ = opt.step(state, params, A(x=[1.0, -2.0]), ctx())
    close(params["x"], [0.0, 1.0])
    assert state["count"] == 0 and not state["m"]["x"].any() and not state["v"]["x"].any()
    params2, state3, _ = opt.step(state2, params2, A(x=[1.0, 0.0]), ctx(2))
    close(state2["m"]["x"], [0.1, -0.2])


# -- dtypes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("opt", OPTIMIZERS, ids=lambda o: type(o).__name__)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dtype_preserved_and_computed_in_float64(opt, dtype):
    params = Arrays({"w": np.array([1.0, -2.0], dtype), "steps": np.array(7, np.int64)})
    update = Arrays({"w": np.array([0.5, 0.25], dtype), "steps": np.array(3, np.int64)})
    state = opt.init(params)
    out, state, _ = opt.step(state, params, update, ctx())
    assert out["w"].dtype == dtype
    assert out["steps"].dtype == np.int64 and out["steps"] == 10  # integer arrays take the plain mean
    for moment in ("m", "v", "trace"):
        if moment in state:
            assert set(state[moment]) == {"w"}  # no moments for integer arrays
            assert state[moment]["w"].dtype == np.result_type(dtype, np.float32)
    # same numbers as the float64 run, up to the final cast
    ref, _, _ = opt.step(opt.init(A(w=[1.0, -2.0])), A(w=[1.0, -2.0]), A(w=[0.5, 0.25]), ctx())
    np.testing.assert_array_equal(out["w"], ref["w"].astype(dtype))


def test_momentum_handles_complex_arrays():
    p = Arrays({"z": np.array([1 + 1j], np.complex64)})
    opt = Momentum(lr=0.5, momentum=0.9)
    out, state, _ = opt.step(opt.init(p), p, Arrays({"z": np.array([2 - 2j], np.complex64)}), ctx())
    assert out["z"].dtype == np.complex64 and out["z"][0] == 2 + 0j
    assert state["trace"]["z"].dtype == np.complex64


# -- named strategies -----------------------------------------------------------------------------


def test_named_strategies_compose_the_right_optimizer_with_flower_defaults():
    assert FedAvgM(server_learning_rate=0.7, server_momentum=0.9).optimizer == Momentum(0.7, 0.9, variant="torch")
    assert FedAvgM().optimizer == Momentum(1.0, 0.0)
    assert FedAdam().optimizer == Adam(lr=0.1, b1=0.9, b2=0.99, eps=1e-3, variant="flwr")
    assert FedYogi().optimizer == Yogi(lr=0.01, b1=0.9, b2=0.99, eps=1e-3)
    assert FedAdagrad().optimizer == Adagrad(lr=0.1, eps=1e-3, b1=0.0)
    assert FedProx().optimizer == FedAvg().optimizer == SGD(1.0)


def test_named_strategies_take_fedavgs_selection_keywords():
    s = FedAdam(eta=0.05, fraction_train=0.5, min_train_nodes=3, fraction_evaluate=0, min_evaluate_nodes=0)
    assert (s.select.fraction, s.select.min_nodes, s.select_evaluate) == (0.5, 3, None)
    assert s.optimizer.lr == 0.05
    base = FedAvg(node_config={"epochs": 2})
    for make in (FedAvgM, FedAdagrad, FedAdam, FedYogi):
        t = make(node_config={"epochs": 2})
        assert (t.select, t.aggregate, t.select_evaluate, t.node_config) == (
            base.select,
            base.aggregate,
            base.select_evaluate,
            base.node_config,
        )


def test_unknown_keyword_names_the_strategy_and_eta_l_hint():
    with pytest.raises(TypeError, match=r"FedAdam\(\) got unexpected keyword argument\(s\) \['eta_l'\].*node_config"):
        FedAdam(eta_l=0.1)
    with pytest.raises(TypeError, match=r"FedYogi\(\).*\['min_available_nodes'\]"):
        FedYogi(min_available_nodes=2)


def test_fedprox_sends_proximal_mu_with_the_node_config():
    s = FedProx(proximal_mu=lambda r: 0.1 * r, node_config={"epochs": 1})
    state = s.init(A(x=[0.0]))
    _, config, _ = s.configure_train(state, [1, 2], ctx(3))
    assert config == {"epochs": 1, "proximal-mu": pytest.approx(0.3)}
    with pytest.raises(StrategyError, match="proximal_mu="):
        FedProx(node_config={"proximal-mu": 0.1})
