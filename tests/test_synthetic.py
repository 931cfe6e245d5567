"""Synthetic data sets: FedProx Synthetic(alpha, beta), LEAF Synthetic, FCUBE."""

from __future__ import annotations

import itertools
import json
import math
import random

import numpy as np
import pytest

from corolla.data import fcube as fcube_mod
from corolla.data import synthetic as syn
from corolla.data.fcube import OCTANT_PAIRS, fcube, fcube_octants, fcube_test
from corolla.data.synthetic import (
    FederatedSplit,
    synthetic_fedprox,
    synthetic_fedprox_model,
    synthetic_fedprox_sizes,
    synthetic_leaf,
    synthetic_leaf_model,
    synthetic_leaf_sizes,
)


def _clear_caches() -> None:
    for f in (
        syn._fedprox_sizes,
        syn._fedprox_iid_model,
        syn._fedprox_device,
        syn._leaf_sizes,
        syn._leaf_global,
        syn._leaf_task,
        fcube_mod._train,
        fcube_mod._test,
    ):
        f.cache_clear()


def _same(a: FederatedSplit, b: FederatedSplit) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def _norm_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def _mean_pairwise_tv(splits: list[FederatedSplit], num_classes: int) -> float:
    dists = []
    for s in splits:
        y = np.concatenate([s.y_train, s.y_test])
        dists.append(np.bincount(y, minlength=num_classes) / len(y))
    return float(np.mean([0.5 * np.abs(p - q).sum() for p, q in itertools.combinations(dists, 2)]))


# -- FederatedSplit --------------------------------------------------------------------


def test_split_unpacks_as_a_four_tuple_and_records_parameters():
    s = synthetic_fedprox(0)
    x_train, y_train, x_test, y_test = s
    assert x_train is s.x_train and y_test is s.y_test
    assert x_train.dtype == np.float32 and x_test.dtype == np.float32
    assert y_train.dtype == np.int64 and y_test.dtype == np.int64
    for key, value in {"alpha": 1.0, "beta": 1.0, "num_devices": 30, "dim": 60, "num_classes": 10, "seed": 0}.items():
        assert s.info[key] == value
    json.dumps(s.info)  # the record is JSON-ready


def test_returned_arrays_are_private_copies():
    s = synthetic_fedprox(1, seed=5)
    s.x_train[:] = 0.0
    s.y_train[:] = -1
    t = synthetic_fedprox(1, seed=5)
    assert np.abs(t.x_train).sum() > 0 and t.y_train.min() >= 0


# -- FedProx Synthetic(alpha, beta) ----------------------------------------------------


@pytest.mark.parametrize("alpha,beta,iid", [(0.0, 0.0, False), (0.5, 0.5, False), (1.0, 1.0, False), (1, 1, True)])
def test_fedprox_shapes_classes_sizes_and_split(alpha, beta, iid):
    sizes = synthetic_fedprox_sizes(30, seed=0)
    assert sizes.shape == (30,) and sizes.dtype == np.int64
    for k in range(30):
        s = synthetic_fedprox(k, alpha, beta, num_devices=30, seed=0, iid=iid)
        n = int(sizes[k])
        assert s.info["num_samples"] == n == s.num_train + s.num_test
        assert s.num_train == int(0.9 * n)  # the scripts' train_len = int(0.9 * num_samples)
        assert s.x_train.shape == (int(0.9 * n), 60) and s.x_test.shape == (n - int(0.9 * n), 60)
        for y in (s.y_train, s.y_test):
            assert y.min() >= 0 and y.max() < 10
    with pytest.raises(ValueError):
        synthetic_fedprox(30, alpha, beta, num_devices=30, iid=iid)
    with pytest.raises(ValueError):
        synthetic_fedprox(-1, alpha, beta, iid=iid)


def test_fedprox_sizes_follow_floor_lognormal_4_2_plus_50():
    n = synthetic_fedprox_sizes(20000, seed=0)
    assert n.min() >= 50
    m = n - 50  # = floor(L), L ~ LogNormal(4, 2): P(m >= t) = P(L >= t) for integers t >= 1
    for t in (1, 5, 20, 55, 150, 1000, 5000):
        expected = _norm_sf((math.log(t) - 4.0) / 2.0)
        assert abs(np.mean(m >= t) - expected) < 0.015, t
    # log(n - 50) has mean ~4 and std ~2 (n - 50 = 0 when L < 1: those are left out, biasing
    # the moments a little, hence the loose tolerance)
    logs = np.log(m[m >= 1])
    assert abs(logs.mean() - 4.0) < 0.25 and abs(logs.std() - 2.0) < 0.25


def test_fedprox_device_data_does_not_depend_on_other_devices_or_on_num_devices():
    _clear_caches()
    alone = synthetic_fedprox(7, 1.0, 1.0, seed=3)
    _clear_caches()
    for k in range(7):
        synthetic_fedprox(k, 1.0, 1.0, seed=3)
    after_others = synthetic_fedprox(7, 1.0, 1.0, seed=3)
    assert _same(alone, after_others)
    assert np.array_equal(synthetic_fedprox_sizes(2000, seed=3)[:30], synthetic_fedprox_sizes(30, seed=3))
    assert _same(alone, synthetic_fedprox(7, 1.0, 1.0, num_devices=100, seed=3))


def test_fedprox_deterministic_by_seed():
    a, b, c = synthetic_fedprox(4, seed=1), synthetic_fedprox(4, seed=1), synthetic_fedprox(4, seed=2)
    assert _same(a, b)
    assert not np.array_equal(synthetic_fedprox_sizes(30, seed=1), synthetic_fedprox_sizes(30, seed=2))
    assert c.x_train.shape != a.x_train.shape or not np.array_equal(a.x_train, c.x_train)
    i, j = synthetic_fedprox(4, seed=1, iid=True), synthetic_fedprox(4, seed=2, iid=True)
    assert _same(i, synthetic_fedprox(4, seed=1, iid=True))
    assert i.x_train.shape != j.x_train.shape or not np.array_equal(i.x_train, j.x_train)


def test_fedprox_labels_are_argmax_of_the_device_model():
    for k in range(5):
        s = synthetic_fedprox(k, 0.5, 0.5, seed=0)
        m = synthetic_fedprox_model(k, 0.5, 0.5, seed=0)
        x = np.concatenate([s.x_train, s.x_test]).astype(np.float64)
        y = np.concatenate([s.y_train, s.y_test])
        assert np.mean(np.argmax(x @ m["W"] + m["b"], axis=1) == y) > 0.995  # float32 rounding: near-ties
        assert abs(x.mean(axis=0)[0] - m["v"][0]) < 5 / math.sqrt(len(x))  # x_1 ~ N(v_1, 1)


def test_fedprox_alpha_and_beta_are_standard_deviations():
    models = [synthetic_fedprox_model(k, 0.5, 2.0, num_devices=400, seed=0) for k in range(400)]
    u = np.array([m["u"] for m in models])
    B = np.array([m["B"] for m in models])
    assert abs(u.std() - 0.5) < 0.06 and abs(B.std() - 2.0) < 0.25
    for m in models[:20]:  # W_k, b_k entries ~ N(u_k, 1); v_k coordinates ~ N(B_k, 1)
        assert abs(m["W"].mean() - m["u"]) < 0.2 and abs(m["W"].std() - 1.0) < 0.12
        assert abs(m["v"].mean() - m["B"]) < 0.6
    zero = synthetic_fedprox_model(3, 0.0, 0.0)
    assert zero["u"] == 0.0 and zero["B"] == 0.0


def test_fedprox_iid_shares_one_model_and_zero_input_mean():
    m0, m5 = synthetic_fedprox_model(0, iid=True), synthetic_fedprox_model(5, iid=True)
    assert np.array_equal(m0["W"], m5["W"]) and np.array_equal(m0["b"], m5["b"])
    assert m0["W"].shape == (60, 10) and not m0["v"].any()
    s = synthetic_fedprox(0, iid=True)
    assert s.info["iid"] and s.info["alpha"] is None and s.info["beta"] is None
    assert s.info["dataset"] == "synthetic-iid"


def test_fedprox_heterogeneous_devices_differ_more_than_iid():
    def tv(**kw):
        return _mean_pairwise_tv([synthetic_fedprox(k, seed=0, **kw) for k in range(30)], 10)

    hetero, iid = tv(alpha=1.0, beta=1.0), tv(iid=True)
    assert iid < 0.35 and hetero > iid + 0.3, (hetero, iid)


def test_fedprox_validates_parameters():
    with pytest.raises(ValueError):
        synthetic_fedprox(0, alpha=-1.0)
    with pytest.raises(ValueError):
        synthetic_fedprox(0, beta=float("nan"))
    with pytest.raises(ValueError):
        synthetic_fedprox(0, num_devices=0)
    with pytest.raises(TypeError):
        synthetic_fedprox(1.5)


# -- LEAF Synthetic --------------------------------------------------------------------


def test_leaf_shapes_classes_and_split():
    sizes = synthetic_leaf_sizes()
    assert sizes.shape == (1000,) and sizes.min() >= 5 and sizes.max() <= 1000
    assert (sizes == 1000).any() and (sizes == 5).any()  # the cap and the floor both bite
    for t in range(0, 1000, 7):
        s = synthetic_leaf(t)
        n = int(sizes[t])
        assert s.info["num_samples"] == n and s.info["seed"] == 931231 and s.info["prob_clusters"] == [1.0]
        assert s.num_train == max(1, int(0.6 * n)) and s.num_train + s.num_test == n
        # LEAF drops the bias column after labelling: d features, not d + 1
        assert s.x_train.shape[1] == 60 and s.x_test.shape[1] == 60
        assert s.x_train.dtype == np.float32 and s.y_train.dtype == np.int64
        for y in (s.y_train, s.y_test):
            assert y.size == 0 or (y.min() >= 0 and y.max() < 5)
    with pytest.raises(ValueError):
        synthetic_leaf(1000)


def test_leaf_sizes_follow_min_floor_lognormal_3_2_plus_5_cap_1000():
    n = synthetic_leaf_sizes(20000, seed=1)
    m = n - 5
    for t in (1, 10, 20, 100, 500):
        assert abs(np.mean(m >= t) - _norm_sf((math.log(t) - 3.0) / 2.0)) < 0.015, t
    assert abs(np.mean(n == 1000) - _norm_sf((math.log(995) - 3.0) / 2.0)) < 0.01


def test_leaf_deterministic_and_independent_of_other_tasks():
    _clear_caches()
    alone = synthetic_leaf(42)
    _clear_caches()
    for t in range(42):
        synthetic_leaf(t)
    assert _same(alone, synthetic_leaf(42))
    assert _same(alone, synthetic_leaf(42, num_tasks=50))
    other = synthetic_leaf(42, seed=1)
    assert other.x_train.shape != alone.x_train.shape or not np.array_equal(other.x_train, alone.x_train)


def test_leaf_labels_follow_the_task_model():
    agree, column_differs = [], 0
    for t in range(40):
        m = synthetic_leaf_model(t)
        assert m["w"].shape == (61, 5) and m["cluster"] == 0
        row = synthetic_leaf(t, column_softmax=False)
        col = synthetic_leaf(t)
        assert np.array_equal(row.x_train, col.x_train)  # same inputs; only the labelling differs
        x = np.concatenate([row.x_train, row.x_test]).astype(np.float64)
        y = np.concatenate([row.y_train, row.y_test])
        agree.append(np.mean(np.argmax(x @ m["w"][1:] + m["w"][0], axis=1) == y))  # N(0, 0.1) noise only
        column_differs += not np.array_equal(row.y_train, col.y_train)
    assert np.mean(agree) > 0.97
    assert column_differs > 0  # LEAF's column-wise softmax changes labels


def test_leaf_several_clusters():
    clusters = [synthetic_leaf(t, num_tasks=200, prob_clusters=[0.3, 0.7]).info["cluster"] for t in range(200)]
    assert set(clusters) == {0, 1} and 0.15 < np.mean(np.array(clusters) == 0) < 0.45
    assert synthetic_leaf_model(0, num_tasks=200, prob_clusters=[0.3, 0.7])["model_info"].shape == (2,)
    with pytest.raises(ValueError):
        synthetic_leaf(0, prob_clusters=[0.5, 0.6])


# -- FCUBE -----------------------------------------------------------------------------


def _signs(x: np.ndarray) -> list[tuple[int, ...]]:
    return [tuple(int(v) for v in row) for row in np.sign(x).astype(int)]


def test_fcube_parties_get_their_documented_octant_pairs():
    assert fcube_octants(0) == [(1, 1, 1), (-1, -1, -1)]
    assert fcube_octants(1) == [(1, 1, -1), (-1, -1, 1)]
    assert fcube_octants(2) == [(1, -1, 1), (-1, 1, -1)]
    assert fcube_octants(3) == [(1, -1, -1), (-1, 1, 1)]
    for p in range(4):
        s = fcube(p)
        assert s.x_train.shape == (1000, 3) and s.x_train.dtype == np.float32 and s.y_train.dtype == np.int64
        assert np.abs(s.x_train).max() <= 1.0
        signs = _signs(s.x_train)
        assert set(signs) == set(OCTANT_PAIRS[p])
        assert signs.count(OCTANT_PAIRS[p][0]) == 500  # NIID-Bench alternates: half in each octant
        assert np.bincount(s.y_train).tolist() == [500, 500]
        assert s.info["octants"] == [list(o) for o in OCTANT_PAIRS[p]]


def test_fcube_labels_follow_x1_everywhere():
    for p in range(4):
        for x, y in ((s := fcube(p)).x_train, s.y_train), (s.x_test, s.y_test):
            assert np.array_equal(y, (x[:, 0] <= 0).astype(np.int64))  # NIID-Bench: 0 iff x1 > 0


def test_fcube_test_set_is_uniform_over_the_cube_and_shared():
    x, y = fcube_test(20000, seed=0)
    assert x.shape == (20000, 3) and x.min() >= -1.0 and x.max() <= 1.0
    assert np.all(np.abs(x.mean(axis=0)) < 0.03) and np.all(np.abs(x.var(axis=0) - 1 / 3) < 0.02)
    counts = np.unique(np.sign(x) @ np.array([4, 2, 1]), return_counts=True)[1]
    assert len(counts) == 8 and np.all(np.abs(counts / 20000 - 1 / 8) < 0.015)
    assert abs(y.mean() - 0.5) < 0.02
    a, b = fcube(0), fcube(3)
    assert np.array_equal(a.x_test, b.x_test) and len(a.x_test) == 1000
    assert np.array_equal(a.x_test, fcube_test()[0])


def test_fcube_deterministic_independent_and_general_party_counts():
    _clear_caches()
    alone = fcube(2, seed=4)
    _clear_caches()
    fcube(0, seed=4), fcube(1, seed=4)
    assert _same(alone, fcube(2, seed=4))
    assert not np.array_equal(alone.x_train, fcube(2, seed=5).x_train)
    # 8 parties: 2i and 2i+1 share octant pair i; 2 parties: each spans two pairs
    for p in range(8):
        assert set(_signs(fcube(p, num_parties=8, n_train_per_party=100).x_train)) == set(OCTANT_PAIRS[p // 2])
    assert set(_signs(fcube(1, num_parties=2, n_train_per_party=200).x_train)) == set(OCTANT_PAIRS[2] + OCTANT_PAIRS[3])
    with pytest.raises(ValueError):
        fcube(4)


# -- no global RNG ---------------------------------------------------------------------


def test_generators_do_not_touch_global_rng():
    _clear_caches()
    np.random.seed(123)
    random.seed(123)
    before = (np.random.random(), random.random())
    np.random.seed(123)
    random.seed(123)
    synthetic_fedprox(0)
    synthetic_fedprox(1, iid=True)
    synthetic_fedprox_model(2)
    synthetic_leaf(3, prob_clusters=[0.5, 0.5])
    fcube(1)
    assert (np.random.random(), random.random()) == before
