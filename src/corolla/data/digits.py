"""The UCI handwritten digits (8x8 images, 10 classes, 1797 examples), split across nodes.

Bundled with scikit-learn, so it works offline. Features are scaled to [0, 1] (float32),
labels are int64. The split is the same in every process for the same arguments:

1. a fixed global train/test split (`seed`, `test_fraction`): the test part is the held-out
   set for centralized evaluation (`load_digits_test`);
2. a Dirichlet(`alpha`) label-skewed split of the train part across `num_partitions` nodes
   (`corolla.data.Dirichlet`; ``alpha=None`` gives an IID split);
3. each node's own local train/test split (`test_fraction` of its share).

Loading and partitioning are cached per process, so many simulated nodes in one worker
load the data once.
"""

from __future__ import annotations

import functools

import numpy as np

from .. import seeding
from .partitioners import IID, Dirichlet

NUM_CLASSES = 10
NUM_FEATURES = 64


@functools.lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("corolla.data.digits needs scikit-learn: pip install scikit-learn") from e
    d = load_digits()
    X = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    X.flags.writeable = False  # cached and shared: nobody may modify it in place
    y.flags.writeable = False
    return X, y


def _check_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")


def _split(n: int, test_fraction: float, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) positions into range(n); both non-empty when n >= 2."""
    perm = gen.permutation(n)
    n_test = int(round(test_fraction * n))
    if n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


@functools.lru_cache(maxsize=8)
def _global_split(seed: int, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    _, y = _load()
    return _split(len(y), test_fraction, seeding.rng(seed, "digits-split"))


@functools.lru_cache(maxsize=8)
def _partitions(
    num_partitions: int, alpha: float | None, seed: int, test_fraction: float, min_partition_size: int = 10
) -> tuple[np.ndarray, ...]:
    """Per node: indices into the full data set."""
    _, y = _load()
    train, _ = _global_split(seed, test_fraction)
    if alpha is None:
        parts = IID(num_partitions, seed).split(y[train])
    else:
        parts = Dirichlet(num_partitions, alpha, seed, min_partition_size=min_partition_size).split(y[train])
    return tuple(train[p] for p in parts)


def load_digits_partition(
    partition_id: int,
    num_partitions: int,
    alpha: float | None = 0.5,
    seed: int = 0,
    test_fraction: float = 0.2,
    min_partition_size: int = 10,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One node's share of the digits: ``(X_train, y_train, X_test, y_test)``.

    Nodes with the same `num_partitions`, `alpha`, `seed` and `test_fraction` hold disjoint
    shares of the global train part; none of them sees the global test set. With Dirichlet
    skew every node gets at least `min_partition_size` examples (train and test together);
    the data set is small (1438 training examples at the default split), so strong skew over
    more than about 50 nodes may be impossible: then `ValueError` says what to change.
    """
    _check_fraction(test_fraction)
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition_id must be in 0..{num_partitions - 1}, got {partition_id}")
    X, y = _load()
    key = (int(num_partitions), None if alpha is None else float(alpha), int(seed), float(test_fraction))
    idx = _partitions(*key, int(min_partition_size))[partition_id]
    tr, te = _split(len(idx), test_fraction, seeding.rng(seed, "digits-local-split", partition_id))
    return X[idx[tr]], y[idx[tr]], X[idx[te]], y[idx[te]]


def load_digits_test(seed: int = 0, test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """The global held-out test set ``(X_test, y_test)``, for centralized evaluation."""
    _check_fraction(test_fraction)
    X, y = _load()
    _, test = _global_split(int(seed), float(test_fraction))
    return X[test], y[test]
