import numpy as np
import pytest

from corolla import Arrays
from corolla.strategies import (
    SGD,
    FedAvg,
    InvalidReply,
    Mean,
    RoundCtx,
    Strategy,
    StrategyError,
    Uniform,
    WeightCap,
)


def ctx(r=1, seed=0, n=10):
    return RoundCtx(round=r, seed=seed, num_nodes=n)


def test_uniform_selection_seeded_and_sized():
    sel = Uniform(fraction=0.3, min_nodes=2)
    a, _ = sel.select({}, range(100), ctx(r=1))
    b, _ = sel.select({}, range(100), ctx(r=1))
    c, _ = sel.select({}, range(100), ctx(r=2))
    assert a == b and a != c and len(a) == 30 and len(set(a)) == 30
    assert Uniform(fraction=0.01, min_nodes=5).select({}, range(100), ctx())[0].__len__() == 5


def test_uniform_large_lazy_federation():
    nodes, _ = Uniform(fraction=100 / 1_000_000, min_nodes=2).select({}, range(1_000_000), ctx())
    assert len(nodes) == 100 and all(0 <= n < 1_000_000 for n in nodes)


def test_min_nodes_larger_than_federation_names_fix():
    with pytest.raises(StrategyError, match=r"at least 5 nodes.*has 3.*--nodes 5"):
        FedAvg(min_train_nodes=5).validate(3)


def test_fedavg_weighted_mean_hand_computed():
    s = FedAvg()
    base = Arrays({"w": np.array([0.0, 0.0], np.float32)})
    st = s.init(base)
    acc = s.open(st, ctx())
    s.add(acc, 1, Arrays({"w": np.array([1.0, 2.0], np.float32)}), {"num-examples": 1, "loss": 1.0}, ctx())
    s.add(acc, 2, Arrays({"w": np.array([4.0, 8.0], np.float32)}), {"num-examples": 3, "loss": 3.0}, ctx())
    st2, train, server = s.close(acc, ctx())
    # (1*[1,2] + 3*[4,8]) / 4 = [3.25, 6.5]
    np.testing.assert_array_equal(st2["params"]["w"], np.array([3.25, 6.5], np.float32))
    assert st2["params"]["w"].dtype == np.float32
    assert train == {"loss": 2.5}
    assert server["num-updates"] == 2
    assert st["params"]["w"][0] == 0.0  # state in, state out: the input is untouched


def test_server_lr_scales_the_update():
    s = Strategy(select=Uniform(min_nodes=1), optimizer=SGD(lr=0.5))
    base = Arrays({"w": np.array([1.0], np.float64)})
    st = s.init(base)
    acc = s.open(st, ctx())
    s.add(acc, 0, Arrays({"w": np.array([3.0])}), {"num-examples": 1}, ctx())
    st, _, server = s.close(acc, ctx())
    assert st["params"]["w"][0] == 2.0 and server["server-lr"] == 0.5


def test_schedule_hparam():
    s = Strategy(select=Uniform(min_nodes=1), optimizer=SGD(lr=lambda r: 1.0 / r))
    st = s.init(Arrays({"w": np.zeros(1)}))
    acc = s.open(st, ctx(r=4))
    s.add(acc, 0, Arrays({"w": np.ones(1)}), {"num-examples": 1}, ctx(r=4))
    st, _, _ = s.close(acc, ctx(r=4))
    assert st["params"]["w"][0] == 0.25


def test_weight_cap_transform():
    s = Strategy(select=Uniform(min_nodes=1), transforms=(WeightCap(2),))
    st = s.init(Arrays({"w": np.zeros(1)}))
    acc = s.open(st, ctx())
    s.add(acc, 0, Arrays({"w": np.array([0.0])}), {"num-examples": 2}, ctx())
    s.add(acc, 1, Arrays({"w": np.array([3.0])}), {"num-examples": 100}, ctx())
    st, _, _ = s.close(acc, ctx())
    assert st["params"]["w"][0] == 1.5  # capped to equal weights


@pytest.mark.parametrize(
    "reply, match",
    [
        (Arrays({"w": np.zeros(3, np.float32)}), r"float32\[3\] but the global array is float32\[2\]"),
        (Arrays({"w": np.zeros(2, np.float64)}), r"float64\[2\].*astype\(np.float32\)"),
        (Arrays({"v": np.zeros(2, np.float32)}), r"missing: \['w'\]"),
        (Arrays({"w": np.array([np.nan, 0], np.float32)}), "NaN"),
    ],
)
def test_invalid_replies_rejected_with_fix(reply, match):
    s = FedAvg()
    st = s.init(Arrays({"w": np.zeros(2, np.float32)}))
    acc = s.open(st, ctx())
    with pytest.raises(InvalidReply, match=match):
        s.add(acc, 0, reply, {"num-examples": 1}, ctx())
    assert acc.replies == 0


def test_duplicate_transform_names_refused():
    with pytest.raises(StrategyError, match="unique"):
        Strategy(transforms=(WeightCap(1), WeightCap(2)))


def test_mean_streaming_memory_is_per_model_not_per_reply():
    m = Mean()
    from corolla.strategies import Update

    base = Arrays({"w": np.zeros(1000, np.float32)})
    acc = m.open({}, ctx())
    for i in range(50):
        m.add(acc, Update(i, Arrays({"w": np.full(1000, i, np.float32)}), base, 1.0))
    assert len(acc.sums) == 1 and acc.count == 50  # nothing per reply is kept
    out, _, _ = m.result(acc, {}, ctx())
    np.testing.assert_allclose(out["w"], 24.5)


def test_groups_with_own_optimizers_and_a_local_group():
    # SCAFFOLD-like: the control group moves at its own rate; FedBN-like: "bn.*" stays local
    s = Strategy(
        select=Uniform(min_nodes=1),
        groups={"local": "bn.*", "control": "c/*", "model": "*"},
        aggregate={"local": None, "control": Mean(weighted=False), "model": Mean()},
        optimizer={"local": None, "control": SGD(lr=0.5), "model": SGD(lr=1.0)},
    )
    base = Arrays({"w": np.zeros(2), "bn.scale": np.ones(2), "c/w": np.zeros(2)})
    st = s.init(base)
    assert set(st["aggregate"]) == {"control", "model"}
    acc = s.open(st, ctx())
    s.add(
        acc,
        0,
        Arrays({"w": np.array([1.0, 1.0]), "bn.scale": np.full(2, 9.0), "c/w": np.array([2.0, 2.0])}),
        {"num-examples": 3},
        ctx(),
    )
    s.add(
        acc,
        1,
        Arrays({"w": np.array([5.0, 5.0]), "bn.scale": np.full(2, 7.0), "c/w": np.array([4.0, 4.0])}),
        {"num-examples": 1},
        ctx(),
    )
    st, _, server = s.close(acc, ctx())
    np.testing.assert_array_equal(st["params"]["w"], [2.0, 2.0])  # weighted (3*1 + 1*5) / 4
    np.testing.assert_array_equal(st["params"]["c/w"], [1.5, 1.5])  # 0 + 0.5 * unweighted mean 3
    np.testing.assert_array_equal(st["params"]["bn.scale"], [1.0, 1.0])  # local: untouched
    assert list(st["params"]) == ["w", "bn.scale", "c/w"]  # order kept
    assert server["control/server-lr"] == 0.5 and server["model/num-updates"] == 2


def test_group_mistakes_are_named():
    with pytest.raises(StrategyError, match="names groups"):
        Strategy(groups={"a": "x*", "model": "*"}, aggregate={"model": Mean()})
    s = Strategy(groups={"model": "w*"})
    with pytest.raises(StrategyError, match="matches no group"):
        s.init(Arrays({"b": np.zeros(1)}))


def test_robust_aggregator_with_hiding_transform_is_refused():
    class NeedsAll(Mean):
        needs_individual_updates = True

    class Hide(WeightCap):
        hides_updates = True

    with pytest.raises(StrategyError, match="NeedsAll needs individual updates but weight_cap hides them"):
        Strategy(aggregate=NeedsAll(), transforms=(Hide(1.0),))


def test_aggregator_minimum_checked_against_selector():
    class NeedsFive(Mean):
        def min_updates(self):
            return 5

    with pytest.raises(StrategyError, match="NeedsFive needs at least 5 updates.*raise min_nodes to >= 5"):
        Strategy(select=Uniform(min_nodes=2), aggregate=NeedsFive())


def test_transforms_ignore_local_arrays():
    from corolla.strategies.transforms import ClipNorm

    s = Strategy(
        select=Uniform(min_nodes=1),
        groups={"local": "bn", "model": "*"},
        aggregate={"local": None, "model": Mean()},
        optimizer={"local": None, "model": SGD()},
        transforms=(ClipNorm(1.0),),
    )
    st = s.init(Arrays({"w": np.zeros(1), "bn": np.zeros(1)}))
    acc = s.open(st, ctx())
    s.add(acc, 0, Arrays({"w": np.array([0.5]), "bn": np.array([100.0])}), {"num-examples": 1}, ctx())
    st, _, server = s.close(acc, ctx())
    assert st["params"]["w"][0] == 0.5  # the local drift did not count toward the clip norm
    assert server["side/clipped"] == 0.0


def test_selector_observes_replies_into_its_state():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Learning(Uniform):
        def init(self):
            return {"seen": 0.0}

        def observe(self, state, node, metrics, ctx):
            return {"seen": state["seen"] + metrics["loss"]}

    s = Strategy(select=Learning(min_nodes=1))
    st = s.init(Arrays({"w": np.zeros(1)}))
    acc = s.open(st, ctx())
    s.add(acc, 0, Arrays({"w": np.ones(1)}), {"num-examples": 1, "loss": 2.0}, ctx())
    s.add(acc, 1, Arrays({"w": np.ones(1)}), {"num-examples": 1, "loss": 3.0}, ctx())
    st2, _, _ = s.close(acc, ctx())
    assert st2["select"] == {"seen": 5.0} and st["select"] == {"seen": 0.0}


class _StepOnly:
    """SGD(1) without `plain_step`: forces the two-pass close (aggregate, then add it)."""

    def init(self, params):
        return {}

    def step(self, state, params, update, ctx):
        return SGD(1.0).step(state, params, update, ctx)


def _close(strategy, base, replies, c):
    st = strategy.init(base)
    acc = strategy.open(st, c)
    for node, (arrays, n) in enumerate(replies):
        strategy.add(acc, node, arrays, {"num-examples": n}, c)
    return strategy.close(acc, c)


@pytest.mark.parametrize(
    "aggregate, cohort, size",
    [
        (Mean(), 0, 1000),  # hot fold: float64 sums from the first reply
        (Mean(hot_below=0), 3, 5000),  # the held cohort, folded once in `result`
        (Mean(hot_below=0, window=2), 0, 5000),  # windowed: sums, then a last fold
    ],
)
def test_fedavg_writes_new_arrays_in_the_aggregators_last_pass(monkeypatch, aggregate, cohort, size):
    rng = np.random.default_rng(7)
    base = Arrays({"w": rng.standard_normal(size).astype(np.float32), "b": rng.standard_normal(3).astype(np.float32)})
    replies = [
        (Arrays((k, (v + rng.standard_normal(v.shape) * 1e-3).astype(np.float32)) for k, v in base.items()), n)
        for n in (3, 5, 11)
    ]
    c = RoundCtx(round=1, seed=0, num_nodes=3, cohort=cohort)
    sel = Uniform(min_nodes=1)
    two_pass, _, m2 = _close(Strategy(select=sel, aggregate=aggregate, optimizer=_StepOnly()), base, replies, c)
    calls = []
    monkeypatch.setattr(Mean, "result", lambda *a: calls.append(a) or pytest.fail("the fused close calls result"))
    fused, _, m1 = _close(Strategy(select=sel, aggregate=aggregate, optimizer=SGD(1.0)), base, replies, c)
    assert m1 == {**m2, "server-lr": 1.0} and not calls
    w = np.array([n for _, n in replies], np.float64)
    for k in base:
        exact = sum(wi * r[k].astype(np.float64) for wi, (r, _) in zip(w, replies)) / w.sum()
        got = fused["params"][k]
        assert got.dtype == np.float32
        np.testing.assert_array_max_ulp(got, exact.astype(np.float32), maxulp=1)  # rounded once
        np.testing.assert_array_max_ulp(got, two_pass["params"][k], maxulp=1)  # the two passes: twice
        assert np.abs(got - exact).max() <= np.abs(two_pass["params"][k] - exact).max()


def test_close_keeps_two_passes_where_one_would_change_the_result(monkeypatch):
    """A server lr other than 1, an integer array in the group, or a transform between the
    aggregate and the step: `result` then `step`, as before."""
    base = Arrays({"w": np.array([1.0, 2.0], np.float32), "n": np.array([5], np.int64)})
    replies = [(Arrays({"w": np.array([2.0, 2.0], np.float32), "n": np.array([2], np.int64)}), 1)] * 2
    c = RoundCtx(round=1, seed=0, num_nodes=2, cohort=2)
    seen = []
    real = Mean.result
    monkeypatch.setattr(Mean, "result", lambda self, *a: seen.append(1) or real(self, *a))
    sel = Uniform(min_nodes=1)
    st, _, server = _close(Strategy(select=sel), base, replies, c)  # the int array: truncated update, added
    assert seen and st["params"]["n"].tolist() == [2] and st["params"]["w"].tolist() == [2.0, 2.0]
    seen.clear()
    w_only = Arrays({"w": base["w"]})
    w_replies = [(Arrays({"w": r["w"]}), 1) for r, _ in replies]
    st, _, server = _close(Strategy(select=sel, optimizer=SGD(0.5)), w_only, w_replies, c)
    assert seen and server["server-lr"] == 0.5 and st["params"]["w"].tolist() == [1.5, 2.0]
    seen.clear()
    st, _, _ = _close(Strategy(select=sel, transforms=(WeightCap(10),)), w_only, w_replies, c)
    assert seen and st["params"]["w"].tolist() == [2.0, 2.0]
