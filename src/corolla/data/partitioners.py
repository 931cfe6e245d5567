"""Split a data set's rows across nodes, the ways the FL literature does.

A partitioner is frozen config with one method, ``split(data) -> list[np.ndarray]``: one
sorted array of row indices per partition. `data` is anything `corolla.data.as_source`
takes ((X, y) arrays, a dict of columns, a labels array, a Hugging Face or torch data set);
a partitioner reads only the columns it needs, so the data itself is never copied, and the
partitions of one call are disjoint and together cover the data set once (unless documented).

All randomness comes from ``corolla.seeding.rng(seed, "partition", KEY, ...)``, each
partitioner with its own key: the same seed gives the same partitions in every process, and
the global numpy state is never touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .. import seeding
from .sources import as_source, labels_of

# keys under the "partition" purpose, so partitioners never share a random stream
_IID = 0
_DIRICHLET = 1


@runtime_checkable
class Partitioner(Protocol):
    num_partitions: int

    def split(self, data: Any) -> list[np.ndarray]: ...


def _check_num_partitions(n: int, num_partitions: int) -> None:
    if int(num_partitions) != num_partitions or num_partitions < 1:
        raise ValueError(f"num_partitions must be a positive integer, got {num_partitions!r}")
    if num_partitions > n:
        raise ValueError(
            f"cannot split {n} examples into {num_partitions} non-empty partitions; use at most {n} partitions"
        )


@dataclass(frozen=True)
class IID:
    """Shuffle the rows and cut them into `num_partitions` parts whose sizes differ by at most 1."""

    num_partitions: int
    seed: int = 0

    def split(self, data: Any) -> list[np.ndarray]:
        n = len(as_source(data))
        _check_num_partitions(n, self.num_partitions)
        perm = seeding.rng(self.seed, "partition", _IID).permutation(n)
        return [np.sort(p) for p in np.array_split(perm, self.num_partitions)]


@dataclass(frozen=True)
class Dirichlet:
    """Label skew, Dirichlet per class over nodes: each class is spread by Dirichlet proportions.

    The convention of Yurochkin et al. (2019) and Hsu et al. (2019): for every class ``c``
    draw ``p ~ Dir(alpha, ..., alpha)`` over the `num_partitions` nodes, shuffle the indices
    of class ``c`` and give node ``i`` the next ``p[i]`` share of them. Small `alpha` (0.1)
    gives each node few classes; large `alpha` (100) approaches an IID split. Node sizes vary
    too. No rebalancing is applied.

    If some partition ends up with fewer than `min_partition_size` examples, the whole draw
    is repeated with the next derived seed, up to `max_tries` times; then `ValueError`.
    """

    num_partitions: int
    alpha: float
    seed: int = 0
    min_partition_size: int = 10
    max_tries: int = 100

    def split(self, data: Any) -> list[np.ndarray]:
        return _dirichlet(
            labels_of(as_source(data)),
            self.num_partitions,
            self.alpha,
            self.seed,
            self.min_partition_size,
            self.max_tries,
        )


def _dirichlet(
    labels: np.ndarray, num_partitions: int, alpha: float, seed: int, min_partition_size: int, max_tries: int
) -> list[np.ndarray]:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    n = len(labels)
    _check_num_partitions(n, num_partitions)
    if not (np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive number, got {alpha!r}")
    if min_partition_size < 0:
        raise ValueError(f"min_partition_size must be >= 0, got {min_partition_size}")
    if max_tries < 1:
        raise ValueError(f"max_tries must be >= 1, got {max_tries}")
    if num_partitions * min_partition_size > n:
        raise ValueError(
            f"{num_partitions} partitions of at least {min_partition_size} examples need "
            f"{num_partitions * min_partition_size} examples but there are {n}; lower "
            f"min_partition_size to <= {n // num_partitions} or use fewer partitions"
        )

    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    smallest = 0
    for attempt in range(max_tries):
        gen = seeding.rng(seed, "partition", _DIRICHLET, attempt)
        parts: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
        for idx in by_class:
            idx = gen.permutation(idx)
            p = gen.dirichlet(np.full(num_partitions, float(alpha)))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for part, chunk in zip(parts, np.split(idx, cuts)):
                part.append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        smallest = min(len(p) for p in out)
        if smallest >= min_partition_size:
            return out
    raise ValueError(
        f"no Dirichlet(alpha={alpha}) split of {n} examples into {num_partitions} partitions gave "
        f"every partition >= {min_partition_size} examples in {max_tries} tries (smallest last "
        f"try: {smallest}); raise alpha, lower min_partition_size, use fewer partitions, or raise max_tries"
    )
