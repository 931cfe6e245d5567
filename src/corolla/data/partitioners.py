"""Split a data set's indices across nodes.

Every partitioner returns one sorted ``np.ndarray`` of indices per partition. Indices select
rows of the caller's data (``X[idx]``), so partitioning never copies the data itself, and
the partitions of one call are disjoint and together cover the data set exactly once.

All randomness comes from ``corolla.seeding.rng(seed, "partition", ...)``: the same seed
gives the same partitions in every process, and the global numpy state is never touched.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import seeding

# keys under the "partition" purpose, so partitioners never share a random stream
_IID = 0
_DIRICHLET = 1


def _check_num_partitions(n: int, num_partitions: int) -> None:
    if int(num_partitions) != num_partitions or num_partitions < 1:
        raise ValueError(f"num_partitions must be a positive integer, got {num_partitions!r}")
    if num_partitions > n:
        raise ValueError(
            f"cannot split {n} examples into {num_partitions} non-empty partitions; use at most {n} partitions"
        )


def iid(n: int, num_partitions: int, seed: int = 0) -> list[np.ndarray]:
    """Shuffle ``range(n)`` and cut it into `num_partitions` parts whose sizes differ by at most 1."""
    _check_num_partitions(n, num_partitions)
    perm = seeding.rng(seed, "partition", _IID).permutation(n)
    return [np.sort(p) for p in np.array_split(perm, num_partitions)]


def dirichlet(
    labels: Sequence[int] | np.ndarray,
    num_partitions: int,
    alpha: float,
    seed: int = 0,
    min_partition_size: int = 10,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Label-skewed partitions: each class is spread over the nodes by Dirichlet proportions.

    The convention of Yurochkin et al. (2019) and Hsu et al. (2019): for every class ``c``
    draw ``p ~ Dir(alpha, ..., alpha)`` over the `num_partitions` nodes, shuffle the indices
    of class ``c`` and give node ``i`` the next ``p[i]`` share of them. Small `alpha` (0.1)
    gives each node few classes; large `alpha` (100) approaches an IID split. Node sizes vary
    too. No rebalancing is applied.

    If some partition ends up with fewer than `min_partition_size` examples, the whole draw
    is repeated with the next derived seed, up to `max_tries` times; then `ValueError`.
    """
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
