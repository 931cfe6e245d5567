"""Partitioners and the digits loader."""

from __future__ import annotations

import numpy as np
import pytest

from corolla.data import IID, Dirichlet


def _labels(n_per_class: int = 200, num_classes: int = 10) -> np.ndarray:
    return np.repeat(np.arange(num_classes), n_per_class)


def _check_cover(parts: list[np.ndarray], n: int) -> None:
    """Sorted, disjoint, and together exactly range(n)."""
    assert sum(len(p) for p in parts) == n
    for p in parts:
        assert p.dtype.kind == "i"
        assert np.all(np.diff(p) > 0)  # sorted, no duplicates within a partition
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))


def _mean_label_entropy(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    out = []
    for p in parts:
        q = np.bincount(labels[p], minlength=labels.max() + 1) / len(p)
        q = q[q > 0]
        out.append(-(q * np.log(q)).sum())
    return float(np.mean(out))


# -- iid -------------------------------------------------------------------------------


def test_iid_covers_disjoint_and_balanced():
    parts = IID(10, seed=0).split(np.zeros(1003))
    _check_cover(parts, 1003)
    assert {len(p) for p in parts} <= {100, 101}


def test_iid_deterministic_by_seed():
    a, b, c = (
        IID(7, seed=1).split(np.zeros(500)),
        IID(7, seed=1).split(np.zeros(500)),
        IID(7, seed=2).split(np.zeros(500)),
    )
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_iid_does_not_touch_global_rng():
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    IID(4, seed=0).split(np.zeros(100))
    Dirichlet(4, alpha=0.5, seed=0, min_partition_size=1).split(_labels(20))
    assert np.random.random() == before


def test_iid_rejects_bad_counts():
    with pytest.raises(ValueError, match="at most 5"):
        IID(6, seed=0).split(np.zeros(5))
    with pytest.raises(ValueError, match="positive integer"):
        IID(0, seed=0).split(np.zeros(5))


# -- dirichlet -----------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.1, 0.5, 1.0, 100.0])
def test_dirichlet_covers_and_disjoint(alpha):
    labels = _labels()
    parts = Dirichlet(20, alpha=alpha, seed=0).split(labels)
    _check_cover(parts, len(labels))


def test_dirichlet_deterministic_by_seed():
    labels = _labels()
    a = Dirichlet(10, alpha=0.5, seed=3).split(labels)
    b = Dirichlet(10, alpha=0.5, seed=3).split(labels)
    c = Dirichlet(10, alpha=0.5, seed=4).split(labels)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_dirichlet_label_skew_grows_as_alpha_shrinks():
    labels = _labels()
    entropy = {
        alpha: np.mean(
            [_mean_label_entropy(labels, Dirichlet(20, alpha=alpha, seed=s).split(labels)) for s in range(3)]
        )
        for alpha in (0.1, 1.0, 100.0)
    }
    assert entropy[0.1] < entropy[1.0] < entropy[100.0]
    assert entropy[100.0] > 0.95 * np.log(10)  # nearly IID: almost uniform labels on every node
    assert entropy[0.1] < 0.5 * np.log(10)


def test_dirichlet_respects_min_partition_size():
    labels = _labels(50)  # 500 examples over 20 nodes: skew often leaves a node under 10
    retried = 0
    for seed in range(8):
        first = Dirichlet(20, alpha=0.5, seed=seed, min_partition_size=0, max_tries=1).split(labels)
        parts = Dirichlet(20, alpha=0.5, seed=seed, min_partition_size=10).split(labels)
        assert min(len(p) for p in parts) >= 10
        _check_cover(parts, len(labels))
        retried += min(len(p) for p in first) < 10
    assert retried > 0  # the constraint was actually exercised


def test_dirichlet_impossible_request_is_a_clear_error():
    labels = _labels(10)  # 100 examples
    with pytest.raises(ValueError, match="lower min_partition_size to <= 10"):
        Dirichlet(10, alpha=0.5, seed=0, min_partition_size=11).split(labels)
    with pytest.raises(ValueError, match="raise alpha"):
        Dirichlet(10, alpha=0.01, seed=0, min_partition_size=10, max_tries=3).split(labels)
    with pytest.raises(ValueError, match="alpha must be a positive"):
        Dirichlet(10, alpha=0.0, seed=0).split(labels)


def test_dirichlet_works_with_arbitrary_label_values():
    labels = np.array([7, 3, 3, 9, 7, 7, 3, 9, 9, 3] * 10)
    parts = Dirichlet(4, alpha=1.0, seed=0, min_partition_size=5).split(labels)
    _check_cover(parts, len(labels))


# -- digits ------------------------------------------------------------------------------------


def test_digits_partitions_are_disjoint_and_exclude_the_global_test_set():
    pytest.importorskip("sklearn")
    from corolla.data.digits import load_digits_partition, load_digits_test

    X_test, y_test = load_digits_test(seed=0)
    assert X_test.shape[1] == 64 and len(X_test) == len(y_test) == 359
    seen: set[bytes] = set()
    total = 0
    for pid in range(20):
        X, y, Xl, yl = load_digits_partition(pid, 20, alpha=0.5, seed=0)
        assert X.dtype == np.float32 and y.dtype == np.int64
        assert 0.0 <= X.min() and X.max() <= 1.0
        assert len(X) == len(y) and len(Xl) == len(yl) and len(yl) >= 1 and len(y) >= 1
        total += len(y) + len(yl)
        for row in np.concatenate([X, Xl]):
            seen.add(row.tobytes())
    assert total == 1797 - 359
    test_rows = {row.tobytes() for row in X_test}
    # digits has a handful of duplicate images, so compare by count of overlap, not exact sets
    assert len(seen & test_rows) <= 5


def test_digits_deterministic_and_label_skewed():
    pytest.importorskip("sklearn")
    from corolla.data.digits import load_digits_partition

    a = load_digits_partition(3, 20, alpha=0.5, seed=0)
    b = load_digits_partition(3, 20, alpha=0.5, seed=0)
    c = load_digits_partition(3, 20, alpha=0.5, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])
    skewed = load_digits_partition(0, 20, alpha=0.1, seed=0)[1]
    iid_like = load_digits_partition(0, 20, alpha=None, seed=0)[1]
    assert len(np.unique(skewed)) < len(np.unique(iid_like))
    with pytest.raises(ValueError, match="partition_id"):
        load_digits_partition(20, 20)
