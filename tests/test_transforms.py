"""Update transforms: ClipNorm (hand-computed values) and WeightCap; their traits."""

import numpy as np
import pytest

from conftest import noise_app
from corolla import Arrays, Rounds, ServerApp, run_simulation
from corolla.strategies import Mean, StrategyError, Update, WeightCap
from corolla.strategies.base import RoundCtx
from corolla.strategies.strategy import InvalidReply, Strategy
from corolla.strategies.transforms import ClipNorm, Transform, clip_by_norm, delta_norm

CTX = RoundCtx(round=1, seed=0, num_nodes=3)


def A(**kw):
    return Arrays({k: np.asarray(v, np.float32) for k, v in kw.items()})


def update(arrays, base, weight=1.0, node=0, metrics=None):
    return Update(node=node, arrays=arrays, base=base, weight=weight, metrics=metrics or {})


def test_delta_of_norm_10_clipped_to_1_is_base_plus_delta_over_10():
    base = A(w=[1.0, 1.0], b=[2.0])
    arrays = A(w=[7.0, 1.0], b=[10.0])  # delta: w [6, 0], b [8] -> norm 10 across both arrays
    assert delta_norm(arrays, base) == pytest.approx(10.0)
    u = ClipNorm(1.0).per_update({}, update(arrays, base), CTX)
    np.testing.assert_allclose(u.arrays["w"], [1.6, 1.0], rtol=1e-6)
    np.testing.assert_allclose(u.arrays["b"], [2.8], rtol=1e-6)
    assert u.arrays["w"].dtype == np.float32 and u.side == {"clipped": 1.0}
    assert u.base is base and u.weight == 1.0
    assert delta_norm(u.arrays, u.base) == pytest.approx(1.0, rel=1e-6)
    # the input update is not modified
    np.testing.assert_array_equal(arrays["w"], [7.0, 1.0])


def test_under_the_bound_unchanged():
    base = A(w=[0.0, 0.0])
    arrays = A(w=[0.3, 0.4])  # norm 0.5
    u0 = update(arrays, base)
    u = ClipNorm(1.0).per_update({}, u0, CTX)
    assert u.arrays is arrays and u.side == {"clipped": 0.0}
    at = update(A(w=[3.0, 4.0]), base)  # norm exactly 5
    exactly = ClipNorm(5.0).per_update({}, at, CTX)
    assert exactly.arrays is at.arrays and exactly.side["clipped"] == 0.0


def test_integer_arrays_are_neither_counted_nor_changed():
    base = Arrays({"w": np.zeros(2, np.float64), "n": np.array([5], np.int64)})
    arrays = Arrays({"w": np.array([3.0, 4.0]), "n": np.array([100], np.int64)})
    out, clipped, norm = clip_by_norm(arrays, base, 2.5)
    assert clipped and norm == pytest.approx(5.0)
    np.testing.assert_allclose(out["w"], [1.5, 2.0])
    assert out["n"].dtype == np.int64 and out["n"][0] == 100


def test_clipped_side_statistic_is_summed_by_mean():
    base = A(w=[0.0, 0.0])
    s = Strategy(transforms=(ClipNorm(1.0),), select_evaluate=None)
    state = s.init(base)
    acc = s.open(state, CTX)
    replies = [A(w=[6.0, 8.0]), A(w=[0.0, 0.5]), A(w=[0.0, -3.0])]  # norms 10, 0.5, 3
    for i, arrays in enumerate(replies):
        acc = s.add(acc, i, arrays, {"num-examples": 1}, CTX)
    new, _, server = s.close(acc, CTX)
    assert server["side/clipped"] == 2.0 and server["num-updates"] == 3
    # clipped updates: [0.6, 0.8], [0, 0.5], [0, -1] -> mean [0.2, 0.1]
    np.testing.assert_allclose(new["params"]["w"], [0.2, 0.1], rtol=1e-6)
    # Mean's side sums are weighted, like the arrays
    acc = s.open(state, CTX)
    for i, (arrays, n) in enumerate(zip(replies, (2, 3, 5))):
        acc = s.add(acc, i, arrays, {"num-examples": n}, CTX)
    _, _, server = s.close(acc, CTX)
    assert server["side/clipped"] == 2 + 5 and server["weight-sum"] == 10


def test_clip_norm_traits_and_validation():
    c = ClipNorm(0.5)
    assert isinstance(c, Transform) and c.name == "clip"
    assert c.hides_updates is False and c.bounds_norm == 0.5 and c.placement == "server"
    scheduled = ClipNorm(lambda r: 1.0 / r)
    assert scheduled.bounds_norm is None and scheduled.norm_at(4) == 0.25
    w = WeightCap(10)
    assert w.hides_updates is False and w.bounds_norm is None and w.placement == "server"
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(StrategyError, match="finite number > 0"):
            ClipNorm(bad)
    with pytest.raises(StrategyError, match="'server' or 'node'"):
        ClipNorm(1.0, placement="client")
    with pytest.raises(StrategyError, match="finite number > 0"):
        ClipNorm(lambda r: 0.0).norm_at(1)


def test_scheduled_clip_uses_the_rounds_value():
    base, arrays = A(w=[0.0]), A(w=[4.0])
    c = ClipNorm(lambda r: float(r))
    for r, expect in ((1, 1.0), (2, 2.0), (5, 4.0)):
        u = c.per_update(c.broadcast({}, RoundCtx(r, 0, 1)), update(arrays, base), RoundCtx(r, 0, 1))
        np.testing.assert_allclose(u.arrays["w"], [expect])


def test_node_placed_clip_broadcasts_and_server_checks_the_bound():
    c = ClipNorm(2.0, placement="node")
    s = Strategy(transforms=(c,), select_evaluate=None)
    base = A(w=[0.0, 0.0])
    state = s.init(base)
    nodes, config, _ = s.configure_train(state, range(3), CTX)
    assert config["clip-norm"] == 2.0
    # a node clips with the same pure function and reports it
    clipped, was, _ = clip_by_norm(A(w=[3.0, 4.0]), base, config["clip-norm"])
    acc = s.open(state, CTX)
    acc = s.add(acc, 0, clipped, {"num-examples": 1, "clipped": float(was)}, CTX)
    acc = s.add(acc, 1, A(w=[0.0, 1.0]), {"num-examples": 1}, CTX)
    with pytest.raises(InvalidReply, match="norm 5 but ClipNorm\\(placement='node'\\) bounds it at 2"):
        s.add(acc, 2, A(w=[3.0, 4.0]), {"num-examples": 1}, CTX)
    new, _, server = s.close(acc, CTX)
    assert server["side/clipped"] == 1.0
    np.testing.assert_allclose(new["params"]["w"], [0.6, 1.3], rtol=1e-6)


def test_weight_cap_caps_weight_only():
    u = update(A(w=[1.0]), A(w=[0.0]), weight=50.0)
    assert WeightCap(10).per_update({}, u, CTX).weight == 10.0
    assert WeightCap(100).per_update({}, u, CTX) is u


def test_clip_in_a_simulation_bounds_every_step():
    base = Arrays({"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)})

    def fn(ctx):
        return Rounds(
            strategy=Strategy(transforms=(ClipNorm(0.01),), aggregate=Mean(weighted=False), select_evaluate=None),
            initial_arrays=base,
        )

    h = run_simulation(ServerApp(fn), noise_app(), num_nodes=4, num_rounds=3, backend="inline")
    # each round moves the model by a mean of updates of norm <= 0.01 (noise norm ~0.35: all clipped)
    assert np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in h.arrays.values())) <= 0.03 + 1e-6
    assert all(r.server["side/clipped"] == 4.0 for r in h.rounds)
