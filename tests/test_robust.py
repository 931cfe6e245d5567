"""Robust aggregators (hand-computed values), the UpdateBuffer's spill path, min-update errors,
determinism, and a small attack end to end."""

from __future__ import annotations

import gc
import itertools
import os

import numpy as np
import pytest

from corolla import Arrays, ClientApp, FedAvg, Rounds, ServerApp, run_simulation
from corolla.message import TRAIN
from corolla.strategies import RoundCtx, StrategyError, Update
from corolla.strategies.robust import (
    RFA,
    Bulyan,
    BulyanAggregate,
    FedMedian,
    FedTrimmedAvg,
    GeometricMedian,
    Krum,
    KrumSelect,
    Median,
    MultiKrum,
    TrimmedMean,
    krum_scores,
)
from corolla.strategies.update_buffer import UpdateBuffer


def ctx(r=1):
    return RoundCtx(round=r, seed=0, num_nodes=100)


def aggregate(agg, rows, weights=None, nodes=None, base=None, order=None):
    """Feed 1-D (or 2-D) updates to `agg` relative to `base` (default 0); returns the update."""
    rows = [np.asarray(r, np.float64) for r in rows]
    base = np.zeros_like(rows[0]) if base is None else np.asarray(base, np.float64)
    weights = weights or [1.0] * len(rows)
    nodes = nodes or list(range(len(rows)))
    acc = agg.open(agg.init(Arrays({"x": base})), ctx())
    for i in order or range(len(rows)):
        u = Update(node=nodes[i], arrays=Arrays({"x": base + rows[i]}), base=Arrays({"x": base}), weight=weights[i])
        acc = agg.add(acc, u)
    out, _, metrics = agg.result(acc, {}, ctx())
    return out["x"], metrics


# -- hand-computed values ---------------------------------------------------------------


def test_median_odd_even_and_unweighted():
    rows = [[1, 2, 3], [4, 0, 6], [100, -5, 1]]
    out, m = aggregate(Median(), rows, weights=[1, 1, 1000])
    np.testing.assert_array_equal(out, [4, 0, 3])  # weights are ignored
    assert m["num-updates"] == 3
    out, _ = aggregate(Median(), rows + [[0, 1, 2]])
    np.testing.assert_array_equal(out, [2.5, 0.5, 2.5])  # even n: mean of the middle two


def test_median_is_relative_to_base():
    base = [10.0, -3.0]
    out, _ = aggregate(Median(), [[1, 1], [2, 5], [3, -1]], base=base)
    np.testing.assert_array_equal(out, [2, 1])  # the update, not the new arrays


def test_trimmed_mean_cut_rounding_like_flower():
    rows = [[1.0], [2.0], [3.0], [4.0], [100.0]]
    assert aggregate(TrimmedMean(0.2), rows)[0][0] == pytest.approx(3.0)  # int(0.2 * 5) = 1 per side
    assert aggregate(TrimmedMean(0.19), rows)[0][0] == pytest.approx(22.0)  # int(0.95) = 0: plain mean
    ten = [[v] for v in [-50, 1, 2, 3, 4, 5, 6, 7, 8, 90]]
    out, m = aggregate(TrimmedMean(0.25), ten, weights=list(range(1, 11)))  # int(2.5) = 2; unweighted
    assert out[0] == pytest.approx(np.mean([2, 3, 4, 5, 6, 7])) and m["trimmed-per-side"] == 2
    with pytest.raises(StrategyError, match=r"\[0, 0.5\)"):
        TrimmedMean(0.5)


def test_krum_scores_and_selection_hand_computed():
    xs = [0.0, 1.0, 2.0, 10.0, -20.0]
    # n=5, f=1: sum of the n-f-2 = 2 nearest squared distances
    d = np.array([[(a - b) ** 2 for b in xs] for a in xs])
    np.testing.assert_array_equal(krum_scores(d, 1), [5, 2, 5, 145, 841])
    out, m = aggregate(KrumSelect(f=1), [[x] for x in xs])
    assert out[0] == 1.0 and m["selected"] == 1 and m["krum-score-min"] == pytest.approx(2.0)
    # Multi-Krum m=3 picks {1, 0, 2} (0 and 2 tie; ties go by node id) and weights them
    out, m = aggregate(KrumSelect(f=1, m=3), [[x] for x in xs], weights=[1, 2, 3, 100, 100])
    assert out[0] == pytest.approx((0 * 1 + 1 * 2 + 2 * 3) / 6) and m["weight-sum"] == 6


def test_bulyan_hand_computed():
    # n=7, f=1: theta=5 selected by Krum (the two far points lose), beta=3 closest to the median
    pts = [(0, 10), (1, 0), (2, 1), (3, 5), (4, 4), (50, 0), (-60, 0)]
    for sel in ("scores", "iterative"):
        out, m = aggregate(BulyanAggregate(f=1, selection=sel), [list(p) for p in pts], weights=[1, 9, 1, 1, 1, 1, 1])
        # x: selected 0..4, median 2, closest three 1,2,3 -> 2; y: 10,0,1,5,4, median 4, closest 4,5,1 -> 10/3
        np.testing.assert_allclose(out, [2.0, 10 / 3])  # unweighted
        assert m["selected"] == 5 and m["beta"] == 3


def test_bulyan_iterative_selection_differs_from_scores_when_it_should():
    rng = np.random.default_rng(3)
    rows = list(rng.normal(size=(11, 4)))
    rows[0] = rows[0] + 6.0
    a, _ = aggregate(BulyanAggregate(f=2), rows)
    b, _ = aggregate(BulyanAggregate(f=2, selection="iterative"), rows)
    assert np.isfinite(a).all() and np.isfinite(b).all()
    assert np.abs(a).max() < 2 and np.abs(b).max() < 2  # the outlier is never chosen


def test_geometric_median():
    # 1-D: the geometric median is the (weighted) median
    out, m = aggregate(GeometricMedian(), [[0.0], [1.0], [100.0]])
    assert out[0] == pytest.approx(1.0, abs=1e-4) and m["weiszfeld-iterations"] >= 1
    out, _ = aggregate(GeometricMedian(), [[0.0], [1.0], [100.0]], weights=[1, 1, 5])
    assert out[0] == pytest.approx(100.0, abs=1e-3)
    # the corners of a square and one far point: the far point pulls with unit force only, so the
    # median moves from (1, 1) to (c, c) with 2*sqrt(2)*(c - 1) = sqrt(2 + 2(c - 1)^2): c = 1 + 1/sqrt(3)
    sq = [[0, 0], [0, 2], [2, 0], [2, 2], [1000, 1000]]
    out, _ = aggregate(GeometricMedian(ftol=1e-12), sq)
    np.testing.assert_allclose(out, 1 + 1 / np.sqrt(3), atol=1e-3)
    out, m = aggregate(GeometricMedian(), sq)  # default ftol=1e-8
    np.testing.assert_allclose(out, 1 + 1 / np.sqrt(3), atol=1e-2)
    out, m = aggregate(GeometricMedian(max_iter=3), sq)
    assert m["weiszfeld-iterations"] == 3
    # max_iter=0 is the weighted mean
    out, _ = aggregate(GeometricMedian(max_iter=0), [[0.0], [4.0]], weights=[3, 1])
    assert out[0] == pytest.approx(1.0)


# -- short rounds, construction -----------------------------------------------------


def test_short_round_raises_naming_n_and_f():
    rows = [[float(i)] for i in range(6)]
    with pytest.raises(StrategyError, match=r"at least 7.*2f \+ 3 with f=2.*n=6"):
        aggregate(KrumSelect(f=2), rows)
    with pytest.raises(StrategyError, match=r"at least 7.*4f \+ 3 with f=1.*n=6"):
        aggregate(BulyanAggregate(f=1), rows)
    with pytest.raises(StrategyError, match="no updates"):
        Median().result(Median().open({}, ctx()), {}, ctx())


def test_min_updates_and_named_defaults():
    assert KrumSelect(f=2).min_updates() == 7 and BulyanAggregate(f=2).min_updates() == 11
    assert KrumSelect(f=0, m=5).min_updates() == 5
    assert Krum(2).select.min_nodes == 7 and Bulyan(2).select.min_nodes == 11
    assert FedMedian().select.min_nodes == 2 and FedTrimmedAvg().aggregate.beta == 0.2
    assert MultiKrum(1, 4).aggregate == KrumSelect(1, 4)
    assert RFA().aggregate.linear is False and RFA().aggregate.needs_individual_updates is True
    with pytest.raises(StrategyError, match="needs at least 11 updates per round.*min_nodes to >= 11"):
        Bulyan(2, min_train_nodes=5)
    with pytest.raises(StrategyError, match="integer >= 0"):
        KrumSelect(f=-1)
    with pytest.raises(StrategyError, match="'scores' or 'iterative'"):
        BulyanAggregate(1, selection="paper")


# -- determinism ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "agg", [Median(), TrimmedMean(0.2), KrumSelect(1), KrumSelect(1, 3), BulyanAggregate(1), GeometricMedian()]
)
def test_arrival_order_does_not_matter(agg):
    rng = np.random.default_rng(0)
    rows = list(rng.normal(size=(7, 5)))
    weights = list(rng.integers(1, 50, size=7).astype(float))
    nodes = [17, 3, 99, 42, 5, 64, 8]
    ref, _ = aggregate(agg, rows, weights, nodes)
    for perm in itertools.islice(itertools.permutations(range(7)), 0, 5040, 997):
        out, _ = aggregate(agg, rows, weights, nodes, order=list(perm))
        np.testing.assert_array_equal(out, ref)  # bit for bit


# -- the buffer ----------------------------------------------------------------------


def _updates(n=9, seed=0):
    rng = np.random.default_rng(seed)
    base = Arrays({"w": rng.normal(size=(5, 7)).astype(np.float32), "b": rng.normal(size=3), "i": np.arange(4)})
    ups = []
    for i in range(n):
        arr = Arrays({
            "w": (base["w"] + rng.normal(size=(5, 7))).astype(np.float32),
            "b": base["b"] + rng.normal(size=3),
            "i": base["i"] + rng.integers(-3, 4, size=4),
        })
        ups.append(Update(node=n - i, arrays=arr, base=base, weight=float(i + 1)))
    return base, ups


def test_buffer_spills_to_a_temp_memmap_and_gives_the_same_answers():
    base, ups = _updates()
    ram = UpdateBuffer()
    disk = UpdateBuffer(memory_budget=3 * 42 * 8, block_bytes=9 * 8 * 5)  # 3 rows in RAM, then spill; 5-col blocks
    for u in ups:
        ram.add(u)
        disk.add(u)
    assert not ram.spilled and disk.spilled and len(disk) == 9 and disk.dim == 35 + 3 + 4
    assert disk.dtype == np.float64  # float64 and int64 arrays: stored as float64
    assert len(list(disk.blocks())) == 9  # ceil(42 / 5)
    np.testing.assert_array_equal(np.hstack([b for _, b in ram.blocks()]), np.hstack([b for _, b in disk.blocks()]))
    np.testing.assert_array_equal(disk.nodes, sorted(u.node for u in ups))
    # the rows are the deltas, in node-id order
    first = min(ups, key=lambda u: u.node)
    d = first.delta()
    np.testing.assert_allclose(disk.row(0), np.concatenate([d[k].ravel() for k in ("w", "b", "i")]))
    # pairwise distances, blocked and centred, match the direct computation
    X = np.vstack([disk.row(i) for i in range(len(disk))])
    direct = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(disk.pairwise_sq_distances(), direct, rtol=1e-12, atol=1e-9)
    f = disk._file
    disk.close()
    assert f.closed and disk.closed
    with pytest.raises(StrategyError, match="closed"):
        list(disk.blocks())


def test_buffer_float32_storage_and_spill_file_is_deleted_at_gc():
    base = Arrays({"w": np.zeros(6, np.float32)})
    buf = UpdateBuffer(memory_budget=0)
    for i in range(3):
        buf.add(Update(node=i, arrays=Arrays({"w": np.full(6, i, np.float32)}), base=base, weight=1.0))
    assert buf.dtype == np.float32 and buf.spilled and buf.nbytes == 3 * 6 * 4
    f = buf._file
    fd = f.fileno()
    assert os.fstat(fd).st_nlink == 0  # unlinked from the start: nothing left behind on a crash
    del buf
    gc.collect()
    assert f.closed


@pytest.mark.parametrize(
    "agg", [Median(), TrimmedMean(0.2), KrumSelect(2), KrumSelect(2, 4), BulyanAggregate(2), GeometricMedian()]
)
def test_aggregators_spill_transparently(agg):
    base, ups = _updates(n=11, seed=1)
    small = type(agg)(**{k: getattr(agg, k) for k in agg.__dataclass_fields__ if k != "memory_budget"},
                      memory_budget=500)
    outs = []
    for a in (agg, small):
        acc = a.open({}, ctx())
        for u in ups:
            acc = a.add(acc, u)
        assert acc.spilled == (a is small)
        out, _, _ = a.result(acc, {}, ctx())
        assert acc.closed
        outs.append(out)
    for k in base:
        np.testing.assert_array_equal(outs[0][k], outs[1][k])
        assert outs[0][k].dtype == base[k].dtype


def test_buffer_rejects_mismatched_updates():
    base = Arrays({"w": np.zeros(3)})
    buf = UpdateBuffer()
    buf.add(Update(node=1, arrays=Arrays({"w": np.ones(3)}), base=base, weight=1.0))
    with pytest.raises(StrategyError, match="shape"):
        buf.add(Update(node=2, arrays=Arrays({"w": np.ones(4)}), base=base, weight=1.0))
    with pytest.raises(StrategyError, match="weight"):
        buf.add(Update(node=3, arrays=Arrays({"w": np.ones(3)}), base=base, weight=float("nan")))
    with pytest.raises(StrategyError, match="complex"):
        c = np.zeros(2, np.complex64)
        UpdateBuffer().add(Update(node=1, arrays=Arrays({"c": c + 1}), base=Arrays({"c": c}), weight=1.0))


# -- end to end: a small attack --------------------------------------------------------


def _attack_run(strategy, num_nodes=10, attackers=(0, 1), rounds=5, factor=-10.0):
    from corolla.data.digits import NUM_CLASSES, NUM_FEATURES, load_digits_partition, load_digits_test

    def softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def mod(msg, c, call_next):  # malicious nodes send global + factor * (trained - global)
        reply = call_next(msg, c)
        if msg.kind != TRAIN or c.partition_id not in attackers:
            return reply
        g, new = msg.content.arrays, reply.content.arrays
        return reply.with_content(arrays=Arrays((k, (g[k] + factor * (new[k] - g[k])).astype(g[k].dtype)) for k in g))

    app = ClientApp(mods=[mod])

    @app.train
    def train(msg, c):
        X, y, _, _ = load_digits_partition(c.partition_id, c.num_partitions, alpha=1.0, seed=c.seed)
        W, b = msg.content.arrays["W"].astype(np.float64), msg.content.arrays["b"].astype(np.float64)
        onehot = np.eye(NUM_CLASSES)[y]
        for _ in range(10):  # full-batch gradient steps
            g = (softmax(X @ W + b) - onehot) / len(y)
            W -= 0.5 * X.T @ g
            b -= 0.5 * g.sum(axis=0)
        return msg.reply(arrays=Arrays({"W": W.astype(np.float32), "b": b.astype(np.float32)}),
                         metrics={"num-examples": len(y)})

    X_test, y_test = load_digits_test(seed=0)

    def evaluate(rnd, arrays):
        if not all(np.isfinite(v).all() for v in arrays.values()):
            return {"accuracy": 0.0}
        return {"accuracy": float((softmax(X_test @ arrays["W"] + arrays["b"]).argmax(1) == y_test).mean())}

    init = Arrays({"W": np.zeros((NUM_FEATURES, NUM_CLASSES), np.float32), "b": np.zeros(NUM_CLASSES, np.float32)})
    server = ServerApp(lambda c: Rounds(strategy=strategy, initial_arrays=init, evaluate_fn=evaluate))
    h = run_simulation(server, app, num_nodes=num_nodes, num_rounds=rounds, backend="inline", seed=0)
    return h.metric("server", "accuracy")[-1][1]


def test_small_attack_fedavg_collapses_median_and_krum_hold():
    off = {"fraction_evaluate": 0.0, "min_evaluate_nodes": 0}
    fedavg = _attack_run(FedAvg(**off))
    median = _attack_run(FedMedian(**off))
    krum = _attack_run(Krum(2, **off))
    honest = _attack_run(FedAvg(**off), attackers=())
    assert honest > 0.8
    assert median > 0.75 and krum > 0.6
    assert fedavg < 0.3 and fedavg < median - 0.4 and fedavg < krum - 0.3
