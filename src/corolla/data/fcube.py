"""FCUBE: a 3-D synthetic data set with feature skew and one shared labelling rule.

From NIID-Bench — Li, Diao, Chen, He, "Federated Learning on Non-IID Data Silos: An
Experimental Study", ICDE 2022 (``Xtra-Computing/NIID-Bench utils.py``, dataset
``generated``; the same generator is FedLab's ``fedlab/contrib/dataset/fcube.py``). Each
party loads with one call and its id::

    from corolla.data.fcube import fcube
    X_train, y_train, X_test, y_test = fcube(party_id)

Points lie in the cube [-1, 1]^3 and the label depends only on the first coordinate, with
NIID-Bench's convention: **y = 0 where x1 > 0, y = 1 where x1 <= 0**. The cube's octants
are paired by reflection through the origin, (s1, s2, s3) with (-s1, -s2, -s3), so every
pair holds both labels. NIID-Bench generates its 4000 training points as four blocks of
1000, block ``loc`` = 0..3 sampling |x| uniformly in [0, 1)^3 with x2 negated when
``loc > 1`` and x3 negated when ``loc`` is odd; within a block, even-numbered points keep the
sign (x1 > 0, label 0) and odd-numbered points are reflected (x1 < 0, label 1). It then cuts
the 4000 points into ``n_parties`` contiguous chunks, so with 4 parties party ``i`` gets
exactly block ``i``, i.e. octant pair ``OCTANT_PAIRS[i]`` (signs of x1, x2, x3):

    party 0: (+, +, +) and (-, -, -)
    party 1: (+, +, -) and (-, -, +)
    party 2: (+, -, +) and (-, +, -)
    party 3: (+, -, -) and (-, +, +)

each half and half (labels balanced within 1). Every party thus learns the same rule
from a different region of input space: feature skew, no label skew.

Here the training set has ``num_parties * n_train_per_party`` points laid out the same
way (four equal blocks, NIID-Bench's alternation inside each block) and cut into
``num_parties`` contiguous chunks. For ``num_parties = 4`` and 1000 points per party this is
NIID-Bench's layout exactly; with 8 parties, parties 2i and 2i+1 share octant pair i; with
fewer than 4 a party spans several pairs; other counts straddle block boundaries just as
NIID-Bench's ``np.array_split`` does. |x| is drawn uniformly in (0, 1] instead of [0, 1),
so that no training point has x1 = 0 exactly (a measure-zero difference).

The test set (``fcube_test``, and ``x_test``/``y_test`` of every party) is NIID-Bench's:
``n_test`` points uniform over [-1, 1)^3 labelled by the same rule, shared by all parties
and meant for evaluating the global model; parties have no local test split.

Randomness comes from `corolla.seeding` only: party p's points from their own stream
``rng(seed, "fcube-train", p)`` (loading party p generates nobody else's points), the test
set from ``rng(seed, "fcube-test")``. NIID-Bench uses Python's unseeded global ``random``.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .. import seeding
from .synthetic import FederatedSplit, _index, _positive_int, _readonly, _split_out

__all__ = ["FCUBE_REFERENCE", "OCTANT_PAIRS", "fcube", "fcube_octants", "fcube_spec", "fcube_test"]

FCUBE_REFERENCE = "https://github.com/Xtra-Computing/NIID-Bench (utils.py, dataset 'generated')"

# Octant pair of NIID-Bench block `loc`: signs (x1, x2, x3) of its label-0 octant and of its
# reflection, the label-1 octant.
OCTANT_PAIRS: tuple[tuple[tuple[int, int, int], tuple[int, int, int]], ...] = tuple(
    ((1, -1 if loc > 1 else 1, -1 if loc % 2 else 1), (-1, 1 if loc > 1 else -1, 1 if loc % 2 else -1))
    for loc in range(4)
)


def _label(x: np.ndarray) -> np.ndarray:
    return (x[:, 0] <= 0).astype(np.int64)  # NIID-Bench: 0 if x1 > 0 else 1


def fcube_spec(
    num_parties: int = 4, n_train_per_party: int = 1000, n_test: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """The parameters that define an FCUBE data set, as a JSON-ready dict."""
    return {
        "dataset": "fcube",
        "reference": FCUBE_REFERENCE,
        "num_parties": _positive_int(num_parties, "num_parties"),
        "n_train_per_party": _positive_int(n_train_per_party, "n_train_per_party"),
        "n_test": _positive_int(n_test, "n_test"),
        "seed": int(seed),
        "dim": 3,
        "num_classes": 2,
        "label_rule": "y = 0 if x1 > 0 else 1",
        "octant_pairs": [[list(a), list(b)] for a, b in OCTANT_PAIRS],
    }


def _layout(party_id: int, num_parties: int, n_per_party: int) -> tuple[np.ndarray, np.ndarray]:
    """(octant pair, reflected?) of each of the party's points, in NIID-Bench's order."""
    total = num_parties * n_per_party
    t = np.arange(party_id * n_per_party, (party_id + 1) * n_per_party, dtype=np.int64)
    block = t * 4 // total
    start = -((-block * total) // 4)  # ceil(block * total / 4): first position of each block
    return block, (t - start) % 2 == 1


def fcube_octants(party_id: int, num_parties: int = 4, n_train_per_party: int = 1000) -> list[tuple[int, int, int]]:
    """Sign patterns (x1, x2, x3) of the octants that party `party_id`'s training points lie in."""
    spec = fcube_spec(num_parties, n_train_per_party)
    p = _index(party_id, spec["num_parties"], "party_id", "num_parties")
    block, reflected = _layout(p, spec["num_parties"], spec["n_train_per_party"])
    return sorted({OCTANT_PAIRS[b][int(r)] for b, r in zip(block.tolist(), reflected.tolist())}, reverse=True)


@functools.lru_cache(maxsize=64)
def _train(party_id: int, num_parties: int, n_per_party: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    block, reflected = _layout(party_id, num_parties, n_per_party)
    signs = np.array([pair[0] for pair in OCTANT_PAIRS], dtype=np.float64)[block]
    signs[reflected] *= -1.0
    mag = 1.0 - seeding.rng(seed, "fcube-train", party_id).random((n_per_party, 3))  # uniform in (0, 1]
    x = (signs * mag).astype(np.float32)
    return _readonly(x, _label(x))


@functools.lru_cache(maxsize=8)
def _test(n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    x = (seeding.rng(seed, "fcube-test").random((n_test, 3)) * 2.0 - 1.0).astype(np.float32)
    return _readonly(x, _label(x))


def fcube_test(n_test: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The shared test set ``(x_test, y_test)``: `n_test` points uniform over [-1, 1)^3."""
    x, y = _test(_positive_int(n_test, "n_test"), int(seed))
    return np.array(x), np.array(y)


def fcube(
    party_id: int, num_parties: int = 4, n_train_per_party: int = 1000, n_test: int = 1000, seed: int = 0
) -> FederatedSplit:
    """Party `party_id`'s FCUBE data: its training points (float32 (n, 3), int64 labels) in its
    octant pair(s), and the shared uniform test set.

    ``info`` holds `fcube_spec` plus ``party_id``, ``octants`` (see `fcube_octants`),
    ``num_train`` and ``num_test``.
    """
    spec = fcube_spec(num_parties, n_train_per_party, n_test, seed)
    p = _index(party_id, spec["num_parties"], "party_id", "num_parties")
    x_train, y_train = _train(p, spec["num_parties"], spec["n_train_per_party"], spec["seed"])
    x_test, y_test = _test(spec["n_test"], spec["seed"])
    info = {
        **spec,
        "party_id": p,
        "octants": [list(o) for o in fcube_octants(p, spec["num_parties"], spec["n_train_per_party"])],
        "num_train": len(y_train),
        "num_test": len(y_test),
    }
    return _split_out((x_train, y_train, x_test, y_test), info)
