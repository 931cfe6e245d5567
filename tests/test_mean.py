"""`Mean`: the streaming weighted mean (windowed, column-blocked fold)."""

import gc
import threading
import weakref

import numpy as np
import pytest

from corolla import Arrays
from corolla.strategies import Mean, RoundCtx, StrategyError, Update
from corolla.strategies import aggregators as agg


def ctx():
    return RoundCtx(round=1, seed=0, num_nodes=10)


def run(mean, updates, base, weights=None):
    acc = mean.open({}, ctx())
    for i, arrays in enumerate(updates):
        mean.add(acc, Update(i, arrays, base, 1.0 if weights is None else weights[i]))
    return mean.result(acc, {}, ctx())


def reference(updates, base, weights):
    """The straightforward float64 fold: sum(w * x) / sum(w) - base, cast once."""
    out = {}
    for k, b in base.items():
        s = np.zeros(np.shape(b), np.float64)
        for u, w in zip(updates, weights):
            s += np.float64(w) * np.asarray(u[k], np.float64)
        out[k] = s / float(sum(weights)) - np.asarray(b, np.float64)
    return out


def model(rng, n=1, dtype=np.float32, shapes=None):
    shapes = shapes or {"w": (37, 11), "b": (11,)}
    return [Arrays({k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}) for _ in range(n)]


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 64 elements, so the test arrays span several blocks and a partial last one,
    and gemv chunks of 256 elements, so a block is several chunks (of 8 or more columns) and a
    remainder."""
    monkeypatch.setattr(agg, "BLOCK", 64)
    monkeypatch.setattr(agg, "GEMV_ELEMS", 256)


@pytest.mark.parametrize("hot_below", [0, 1 << 30])  # windowed fold, and folding each update as it arrives
@pytest.mark.parametrize("window", [1, 3, 16])
@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("n", [1, 5, 40])
def test_matches_float64_reference(small_blocks, window, weighted, n, hot_below):
    rng = np.random.default_rng(n)
    updates = model(rng, n)
    base = Arrays({k: (0.5 * v).astype(np.float32) for k, v in model(rng)[0].items()})
    weights = [int(x) for x in rng.integers(1, 1000, size=n)]
    out, _, metrics = run(Mean(weighted=weighted, window=window, hot_below=hot_below), updates, base, weights)
    ref = reference(updates, base, weights if weighted else [1.0] * n)
    for k in base:
        assert out[k].dtype == np.float32 and out[k].shape == base[k].shape
        np.testing.assert_allclose(out[k], ref[k], rtol=2**-23, atol=1e-6)
    assert metrics["num-updates"] == n
    assert metrics["weight-sum"] == (sum(weights) if weighted else n)


def test_exact_after_cast_for_integer_weights(small_blocks):
    """weight * float32 is exact in float64, so only the sums' roundings differ from the
    straightforward fold: the same bits after the cast (fixed data, so this is deterministic)."""
    rng = np.random.default_rng(7)
    updates = model(rng, 37, shapes={"w": (3000,)})
    base = Arrays({"w": np.zeros(3000, np.float32)})
    weights = [int(x) for x in rng.integers(10, 1000, size=37)]
    ref = reference(updates, base, weights)["w"].astype(np.float32)
    for window in (1, 4, 16, 64):
        out, _, _ = run(Mean(window=window), updates, base, weights)
        np.testing.assert_array_equal(out["w"], ref)


def test_float64_inputs_within_1e_12(small_blocks):
    rng = np.random.default_rng(3)
    updates = model(rng, 23, dtype=np.float64)
    base = model(rng, dtype=np.float64)[0]
    weights = list(rng.random(23) * 10)
    out, _, _ = run(Mean(window=5), updates, base, weights)
    ref = reference(updates, base, weights)
    scale = max(np.max(np.abs(u["w"])) for u in updates) + np.max(np.abs(base["w"]))
    for k in base:
        assert out[k].dtype == np.float64
        assert np.max(np.abs(out[k] - ref[k])) <= 1e-12 * scale


def test_mixed_dtypes_and_shapes(small_blocks):
    rng = np.random.default_rng(5)
    shapes = {"f32": (130,), "f64": (5, 7), "f16": (3, 4, 5), "scalar": (), "empty": (0, 3), "i32": (9,)}
    dtypes = {
        "f32": np.float32,
        "f64": np.float64,
        "f16": np.float16,
        "scalar": np.float32,
        "empty": np.float32,
        "i32": np.int32,
    }

    def arrays(scale):
        return Arrays({k: (rng.standard_normal(s) * scale).astype(dtypes[k]) for k, s in shapes.items()})

    updates = [arrays(100) for _ in range(11)]
    base = arrays(10)
    weights = [float(x) for x in rng.integers(1, 50, size=11)]
    out, _, _ = run(Mean(window=4), updates, base, weights)
    ref = reference(updates, base, weights)
    assert list(out) == list(base)
    for k in base:
        assert out[k].dtype == base[k].dtype and out[k].shape == base[k].shape, k
        if k == "i32":  # integer arrays: truncated like astype
            np.testing.assert_array_equal(out[k], ref[k].astype(np.int32))
        else:
            rtol = {np.float16: 2**-10, np.float32: 2**-23, np.float64: 1e-12}[dtypes[k]]
            np.testing.assert_allclose(out[k], ref[k].astype(dtypes[k]), rtol=rtol, atol=1e-3 if k == "f16" else 1e-9)


def test_window_is_folded_at_result(small_blocks):
    rng = np.random.default_rng(0)
    updates = model(rng, 6)
    base = model(rng)[0]
    m = Mean(window=16, hot_below=0)
    acc = m.open({}, ctx())
    for i, u in enumerate(updates):
        m.add(acc, Update(i, u, base, 2.0))
    assert len(acc.pending) == 6 and acc.sums == {}  # one window: no float64 accumulator at all
    out, _, _ = m.result(acc, {}, ctx())
    assert acc.pending == []
    ref = reference(updates, base, [2.0] * 6)
    for k in base:
        np.testing.assert_allclose(out[k], ref[k], rtol=2**-23, atol=1e-6)


def test_more_updates_than_the_window(small_blocks):
    rng = np.random.default_rng(1)
    updates = model(rng, 50)
    base = model(rng)[0]
    m = Mean(window=8, hot_below=0)
    acc = m.open({}, ctx())
    for i, u in enumerate(updates):
        m.add(acc, Update(i, u, base, float(i + 1)))
        assert len(acc.pending) == (i + 1) % 8
    assert set(acc.sums) == set(base) and acc.count == 50
    out, _, _ = m.result(acc, {}, ctx())
    ref = reference(updates, base, [float(i + 1) for i in range(50)])
    for k in base:
        np.testing.assert_allclose(out[k], ref[k], rtol=2**-23, atol=1e-6)


def test_window_bytes_bounds_the_window():
    rng = np.random.default_rng(2)
    updates = model(rng, 10, shapes={"w": (1000,)})  # 4000 bytes each
    base = Arrays({"w": np.zeros(1000, np.float32)})
    m = Mean(window=16, window_bytes=10_000, hot_below=0)
    acc = m.open({}, ctx())
    for i, u in enumerate(updates):
        m.add(acc, Update(i, u, base, 1.0))
        assert acc.pending_bytes < 10_000 and len(acc.pending) <= 2
    out, _, _ = m.result(acc, {}, ctx())
    np.testing.assert_allclose(out["w"], reference(updates, base, [1.0] * 10)["w"], rtol=2**-23, atol=1e-6)


def test_updates_beyond_the_window_are_released(small_blocks):
    """Memory stays O(window x model): folded updates are not referenced any more."""
    base = Arrays({"w": np.zeros(200, np.float32)})
    m = Mean(window=4, hot_below=0)
    acc = m.open({}, ctx())
    refs = []
    for i in range(20):
        a = np.full(200, float(i), np.float32)
        refs.append(weakref.ref(a))
        m.add(acc, Update(i, Arrays({"w": a}), base, 1.0))
        del a
        gc.collect()
        alive = [j for j, r in enumerate(refs) if r() is not None]
        assert alive == list(range(i + 1 - (i + 1) % 4, i + 1)), alive  # the pending window only
    out, _, _ = m.result(acc, {}, ctx())
    gc.collect()
    assert all(r() is None for r in refs)
    np.testing.assert_allclose(out["w"], 9.5)


def test_deterministic_and_independent_of_memory_layout(small_blocks):
    rng = np.random.default_rng(4)
    updates = model(rng, 30, shapes={"w": (40, 50)})
    base = model(rng, shapes={"w": (40, 50)})[0]
    weights = list(rng.random(30) * 100)  # not integers: products round, order matters
    a, _, _ = run(Mean(window=7), updates, base, weights)
    b, _, _ = run(Mean(window=7), updates, base, weights)
    # the same values as Fortran-ordered arrays and as strided views of bigger arrays
    fortran = [Arrays({"w": np.asfortranarray(u["w"])}) for u in updates]
    strided = []
    for u in updates:
        big = np.zeros((80, 100), np.float32)
        big[::2, ::2] = u["w"]
        strided.append(Arrays({"w": big[::2, ::2]}))
    c, _, _ = run(Mean(window=7), fortran, base, weights)
    d, _, _ = run(Mean(window=7), strided, base, weights)
    assert a["w"].tobytes() == b["w"].tobytes() == c["w"].tobytes() == d["w"].tobytes()


def test_zero_total_weight_and_no_updates():
    base = Arrays({"w": np.zeros(3, np.float32)})
    m = Mean()
    acc = m.open({}, ctx())
    with pytest.raises(StrategyError, match="no updates"):
        m.result(acc, {}, ctx())
    m.add(acc, Update(0, Arrays({"w": np.ones(3, np.float32)}), base, 0.0))
    with pytest.raises(StrategyError, match="weight 0"):
        m.result(acc, {}, ctx())


@pytest.mark.parametrize("w", [-1.0, float("nan"), float("inf")])
def test_bad_weights_refused(w):
    base = Arrays({"w": np.zeros(3, np.float32)})
    m = Mean()
    with pytest.raises(StrategyError, match="weight"):
        m.add(m.open({}, ctx()), Update(0, Arrays({"w": np.ones(3, np.float32)}), base, w))


def test_mismatched_arrays_refused():
    base = Arrays({"w": np.zeros(3, np.float32)})
    m = Mean()
    acc = m.open({}, ctx())
    m.add(acc, Update(0, Arrays({"w": np.ones(3, np.float32)}), base, 1.0))
    with pytest.raises(StrategyError, match="node 1 sent arrays"):
        m.add(acc, Update(1, Arrays({"w": np.ones(4, np.float32)}), base, 1.0))
    with pytest.raises(StrategyError, match="node 2 sent arrays"):
        m.add(acc, Update(2, Arrays({"v": np.ones(3, np.float32)}), base, 1.0))


def test_side_statistics_and_config_validation():
    base = Arrays({"w": np.zeros(2, np.float32)})
    m = Mean(window=2)
    acc = m.open({}, ctx())
    for i in range(5):
        m.add(acc, Update(i, Arrays({"w": np.ones(2, np.float32)}), base, 2.0, side={"clipped": float(i % 2)}))
    _, _, metrics = m.result(acc, {}, ctx())
    assert metrics["side/clipped"] == 4.0 and metrics["weight-sum"] == 10.0
    for bad in ({"window": 0}, {"window": 2.5}, {"window_bytes": -1}):
        with pytest.raises(StrategyError):
            Mean(**bad)
    assert Mean() == Mean() and Mean(window=4) != Mean()


def test_small_models_fold_each_update_as_it_arrives():
    rng = np.random.default_rng(0)
    updates, base = model(rng, 3), Arrays({"w": np.zeros((37, 11), np.float32), "b": np.zeros(11, np.float32)})
    m = Mean()  # 418 parameters: far below hot_below
    acc = m.open({}, ctx())
    m.add(acc, Update(0, updates[0], base, 2.0))
    assert acc.hot and acc.pending == [] and set(acc.sums) == {"w", "b"}  # nothing held back


@pytest.mark.parametrize("gemv_elems", [256, agg.GEMV_ELEMS])
@pytest.mark.parametrize("rows", [1, 2, 5, 17, 40])
def test_weighted_rows_matches_einsum(monkeypatch, gemv_elems, rows):
    """The batched gemv puts every chunk and the remainder in its place, on strided staging rows."""
    monkeypatch.setattr(agg, "GEMV_ELEMS", gemv_elems)
    rng = np.random.default_rng(rows)
    stage = rng.standard_normal((rows, 400))
    w = rng.random(rows) * 100 - 50
    for m in (0, 1, 7, 8, 63, 64, 65, 300, 400):
        y = stage[:, :m]  # rows 400 elements apart, like the staging rows of a short block
        out = np.full(m, np.nan)
        agg._weighted_rows(w, y, out)
        ref = np.einsum("i,ij->j", w, y)
        np.testing.assert_allclose(out, ref, rtol=1e-13, atol=1e-12 * np.max(np.abs(w)))


@pytest.mark.parametrize("hot_below", [0, 1 << 30])
@pytest.mark.parametrize("window", [1, 3, 16])
def test_updates_equal_to_the_base_give_exactly_zero(small_blocks, window, hot_below):
    """The base is a row of weight -sum(w): with integer weights every partial sum is an exact
    multiple of the base, so updates that all equal it cancel exactly."""
    rng = np.random.default_rng(9)
    base = model(rng)[0]
    weights = [int(x) for x in rng.integers(1, 1000, size=20)]
    out, _, _ = run(Mean(window=window, hot_below=hot_below), [base] * 20, base, weights)
    for k in base:
        assert not np.any(out[k]), k


def test_staging_is_kept_per_thread(small_blocks, monkeypatch):
    """A thread's staging rows serve its next rounds, whatever their shapes; a fold on another
    thread gets its own; and where the rows live does not change a bit of the result."""
    rng = np.random.default_rng(6)
    updates = model(rng, 12, shapes={"w": (40, 50)})
    base = model(rng, shapes={"w": (40, 50)})[0]
    weights = list(rng.random(12) * 100)  # not integers: products round, order matters
    m = Mean(window=5, hot_below=0)
    a, _, _ = run(m, updates, base, weights)
    kept = agg._local.staging
    small = model(rng, 3, shapes={"v": (3,)})
    c, _, _ = run(m, small, small[0], [1.0, 2.0, 3.0])
    np.testing.assert_allclose(c["v"], reference(small, small[0], [1.0, 2.0, 3.0])["v"], rtol=2**-23, atol=1e-6)
    b, _, _ = run(m, updates, base, weights)
    assert agg._local.staging is kept and a["w"].tobytes() == b["w"].tobytes()

    other = {}

    def fold_elsewhere():
        other["out"] = run(m, updates, base, weights)[0]
        other["staging"] = agg._local.staging

    t = threading.Thread(target=fold_elsewhere)
    t.start()
    t.join()
    assert other["staging"] is not kept and other["out"]["w"].tobytes() == a["w"].tobytes()

    monkeypatch.setattr(agg, "KEEP_STAGING_BYTES", 0)  # too big to keep: a fresh buffer, not kept
    del agg._local.staging
    d, _, _ = run(m, updates, base, weights)
    assert getattr(agg._local, "staging", None) is None and d["w"].tobytes() == a["w"].tobytes()
