"""Every partitioner: cover, determinism, the statistical property it promises, errors, backends."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from corolla import seeding
from corolla.data.partitioners import (
    IID,
    PARTITIONERS,
    Dirichlet,
    DirichletPerNode,
    FeatureSkew,
    LabelQuantity,
    NaturalId,
    Partitioner,
    QuantitySkew,
    Shards,
    VerticalSplit,
)

NUM_CLASSES = 10
PER_CLASS = 60
N = NUM_CLASSES * PER_CLASS


def _data() -> dict[str, np.ndarray]:
    gen = np.random.default_rng(1234)
    y = np.repeat(np.arange(NUM_CLASSES), PER_CLASS)
    X = gen.normal(size=(N, 4)).astype(np.float32)
    writer = gen.integers(0, 25, N)
    return {"x": X, "label": y, "writer": writer}


DATA = _data()


def _check_cover(parts: list[np.ndarray], n: int) -> None:
    """Sorted, disjoint, and together exactly range(n)."""
    assert sum(len(p) for p in parts) == n
    for p in parts:
        assert p.dtype.kind == "i"
        assert np.all(np.diff(p) > 0)  # sorted, no duplicates within a partition
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def _mean_label_entropy(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    out = []
    for p in parts:
        q = np.bincount(labels[p], minlength=labels.max() + 1) / len(p)
        q = q[q > 0]
        out.append(-(q * np.log(q)).sum())
    return float(np.mean(out))


# one instance per row partitioner, as a function of the seed; each reads what it needs of DATA
ROW_PARTITIONERS = {
    "iid": lambda s: IID(8, seed=s),
    "dirichlet": lambda s: Dirichlet(8, alpha=0.5, seed=s, min_partition_size=5),
    "dirichlet-balanced": lambda s: Dirichlet(8, alpha=0.5, seed=s, min_partition_size=5, self_balancing=True),
    "dirichlet-per-node": lambda s: DirichletPerNode(8, alpha=0.5, seed=s),
    "shards": lambda s: Shards(8, shards_per_node=2, seed=s),
    "label-quantity": lambda s: LabelQuantity(8, labels_per_node=3, seed=s),
    "quantity-skew": lambda s: QuantitySkew(8, sigma=1.0, seed=s, min_partition_size=5),
    "quantity-skew-powerlaw": lambda s: QuantitySkew(8, distribution="powerlaw", seed=s, min_partition_size=5),
    "quantity-skew-dirichlet": lambda s: QuantitySkew(8, distribution="dirichlet", seed=s, min_partition_size=5),
    "feature-skew": lambda s: FeatureSkew(4, features=(0, 1, 2), seed=s),
}


# -- common contract ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ROW_PARTITIONERS))
def test_rows_are_covered_once(name):
    p = ROW_PARTITIONERS[name](0)
    assert isinstance(p, Partitioner)
    parts = p.split(DATA)
    assert len(parts) == p.num_partitions
    assert all(len(q) > 0 for q in parts)
    _check_cover(parts, N)


@pytest.mark.parametrize("name", sorted(ROW_PARTITIONERS))
def test_deterministic_by_seed(name):
    a, b, c = (ROW_PARTITIONERS[name](s).split(DATA) for s in (3, 3, 4))
    assert _same(a, b)
    assert not _same(a, c)


@pytest.mark.parametrize("name", sorted(ROW_PARTITIONERS) + ["natural-id", "vertical"])
def test_global_rng_untouched(name):
    others = {"natural-id": lambda s: NaturalId("writer"), "vertical": lambda s: VerticalSplit(2, seed=s)}
    p = (ROW_PARTITIONERS.get(name) or others[name])(0)
    np.random.seed(99)
    state = np.random.get_state()
    p.split(DATA)
    after = np.random.get_state()
    assert state[0] == after[0] and np.array_equal(state[1], after[1]) and state[2:] == after[2:]


def test_registry_names_every_partitioner():
    assert PARTITIONERS == {
        "iid": IID,
        "dirichlet": Dirichlet,
        "dirichlet-per-node": DirichletPerNode,
        "shards": Shards,
        "label-quantity": LabelQuantity,
        "quantity-skew": QuantitySkew,
        "natural-id": NaturalId,
        "feature-skew": FeatureSkew,
        "vertical": VerticalSplit,
    }
    assert PARTITIONERS["dirichlet"](num_partitions=4, alpha="0.5").alpha == 0.5  # CLI strings coerced
    assert PARTITIONERS["shards"](num_partitions="4").num_partitions == 4
    assert PARTITIONERS["dirichlet"](num_partitions=4, alpha=1, self_balancing="true").self_balancing is True
    assert PARTITIONERS["feature-skew"](num_partitions=2, features="0, 2").features == (0, 2)
    assert PARTITIONERS["quantity-skew"](num_partitions=2, sigma="2").sigma == 2.0


def test_randomness_only_from_partition_keys():
    # IID's permutation is exactly the seeded "partition" stream with key 0: no hidden global state
    perm = seeding.rng(5, "partition", 0).permutation(N)
    assert _same(IID(3, seed=5).split(DATA), [np.sort(p) for p in np.array_split(perm, 3)])


# -- backends: torch and Hugging Face give the same partitions as numpy --------------------


def _backend_cases():
    return {
        **{name: make(0) for name, make in ROW_PARTITIONERS.items()},
        "natural-id": NaturalId("label"),  # torch data sets have no writer column
    }


def test_torch_dataset_gives_the_same_partitions():
    torch = pytest.importorskip("torch")
    from torch.utils.data import TensorDataset

    X, y = DATA["x"], DATA["label"]
    ds = TensorDataset(torch.from_numpy(X), torch.from_numpy(y))
    for name, p in _backend_cases().items():
        assert _same(p.split(ds), p.split((X, y))), name
    assert _same(VerticalSplit(2, seed=1).split(ds), VerticalSplit(2, seed=1).split((X, y)))


def test_hf_dataset_gives_the_same_partitions():
    datasets = pytest.importorskip("datasets")

    X, y = DATA["x"], DATA["label"]
    ds = datasets.Dataset.from_dict({"x": X, "label": y})
    for name, p in _backend_cases().items():
        assert _same(p.split(ds), p.split((X, y))), name
    assert _same(VerticalSplit(2, seed=1).split(ds), VerticalSplit(2, seed=1).split((X, y)))
    with_writer = datasets.Dataset.from_dict({"x": X, "label": y, "writer": [f"w{w:02d}" for w in DATA["writer"]]})
    parts = NaturalId("writer").split(with_writer)
    assert _same(parts, NaturalId("writer").split(DATA))
    assert list(NaturalId("writer").ids(with_writer)) == [f"w{w:02d}" for w in np.unique(DATA["writer"])]


# -- Dirichlet per class: default unchanged, self-balancing, speed path ---------------------


def _dirichlet_reference(labels, num_partitions, alpha, seed, min_partition_size, max_tries=100):
    """The implementation before the one-sort rewrite: a scan per class, lists per node."""
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for attempt in range(max_tries):
        gen = seeding.rng(seed, "partition", 1, attempt)
        parts = [[] for _ in range(num_partitions)]
        for idx in by_class:
            idx = gen.permutation(idx)
            p = gen.dirichlet(np.full(num_partitions, float(alpha)))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for part, chunk in zip(parts, np.split(idx, cuts)):
                part.append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_partition_size:
            return out
    return None  # no split met the minimum


@pytest.mark.parametrize(
    "labels",
    [
        DATA["label"],
        np.random.default_rng(0).integers(0, 7, 2000),
        np.array([7, 3, 3, 9, 7, 7, 3, 9, 9, 3] * 10),
        np.random.default_rng(1).choice(np.array(["cat", "dog", "eel"]), 400),
        np.random.default_rng(2).choice([-5, 3, 70_000, 100_000], 600),  # wide range: the np.unique path
    ],
)
@pytest.mark.parametrize("num_partitions,alpha,seed,min_size", [(20, 0.5, 0, 5), (7, 0.05, 3, 1), (4, 100.0, 1, 0)])
def test_dirichlet_default_output_is_unchanged(labels, num_partitions, alpha, seed, min_size):
    expected = _dirichlet_reference(labels, num_partitions, alpha, seed, min_size)
    p = Dirichlet(num_partitions, alpha, seed, min_partition_size=min_size)
    if expected is None:
        with pytest.raises(ValueError, match="raise alpha"):
            p.split(labels)
    else:
        assert _same(p.split(labels), expected)


def test_dirichlet_self_balancing_evens_out_sizes():
    labels = np.repeat(np.arange(10), 300)
    spread, largest = {}, {}
    for balanced in (False, True):
        sizes = np.array(
            [
                [
                    len(p)
                    for p in Dirichlet(20, 0.5, seed=s, min_partition_size=0, self_balancing=balanced).split(labels)
                ]
                for s in range(6)
            ]
        )
        spread[balanced], largest[balanced] = sizes.std(), sizes.max(axis=1).mean()
    assert spread[True] < 0.8 * spread[False]  # measured: 0.65
    assert largest[True] < largest[False]
    # label skew stays: balancing changes sizes, not the per-class Dirichlet draws
    parts = Dirichlet(20, 0.1, seed=0, min_partition_size=0, self_balancing=True).split(labels)
    assert _mean_label_entropy(labels, parts) < 0.6 * np.log(10)


def test_dirichlet_config_errors():
    with pytest.raises(ValueError, match="self_balancing must be true or false"):
        Dirichlet(4, 0.5, self_balancing="maybe")
    with pytest.raises(ValueError, match="max_tries must be an integer >= 1"):
        Dirichlet(4, 0.5, max_tries=0)
    with pytest.raises(ValueError, match="alpha must be a positive number"):
        Dirichlet(4, alpha=float("nan"))


# -- Dirichlet per node (Hsu et al.) -----------------------------------------------------------


def test_dirichlet_per_node_equal_sizes_and_skew_grows_as_alpha_shrinks():
    labels = np.repeat(np.arange(10), 200)
    entropy = {}
    for alpha in (0.05, 1.0, 1000.0):
        runs = [DirichletPerNode(20, alpha=alpha, seed=s).split(labels) for s in range(3)]
        for parts in runs:
            _check_cover(parts, len(labels))
            assert {len(p) for p in parts} == {100}
        entropy[alpha] = np.mean([_mean_label_entropy(labels, parts) for parts in runs])
    assert entropy[0.05] < entropy[1.0] < entropy[1000.0]
    assert entropy[1000.0] > 0.9 * np.log(10)
    assert entropy[0.05] < 0.5 * np.log(10)  # not lower: 20 equal nodes cannot all hold one class


def test_dirichlet_per_node_sizes_with_remainder_and_exhausted_pools():
    # a skewed prior and tiny alpha: class pools run out and the last nodes are refilled
    labels = np.concatenate([np.zeros(700, int), np.ones(250, int), np.full(53, 2)])
    for seed in range(5):
        parts = DirichletPerNode(9, alpha=0.01, seed=seed).split(labels)
        _check_cover(parts, len(labels))
        sizes = [len(p) for p in parts]
        assert sizes == [112] * 4 + [111] * 5  # 1003 = 9 * 111 + 4, the remainder to the first nodes


def test_dirichlet_per_node_follows_the_global_prior_for_large_alpha():
    labels = np.concatenate([np.zeros(900, int), np.ones(100, int)])
    spread = {}
    for alpha in (0.01, 1e4):
        share = [labels[p].mean() for s in range(4) for p in DirichletPerNode(10, alpha=alpha, seed=s).split(labels)]
        assert np.isclose(np.mean(share), 0.1)  # every row used once, equal sizes
        spread[alpha] = np.std(share)  # fraction of class 1 on each node
    assert spread[1e4] < 0.05  # labels ~ Categorical(p) on every node: binomial std 0.03
    assert spread[0.01] > 0.1


# -- shards (McMahan et al.) -------------------------------------------------------------------


def test_shards_with_label_pure_shards_give_at_most_two_classes():
    labels = DATA["label"]  # 10 classes x 60: 20 shards of 30, each within one class
    for seed in range(5):
        parts = Shards(10, shards_per_node=2, seed=seed).split(labels)
        _check_cover(parts, N)
        assert {len(p) for p in parts} == {60}
        assert max(len(np.unique(labels[p])) for p in parts) <= 2
    parts = Shards(5, shards_per_node=4, seed=0).split(labels)  # 20 shards of 30, 4 per node
    assert max(len(np.unique(labels[p])) for p in parts) <= 4


def test_shards_are_label_sorted_runs():
    labels = np.random.default_rng(0).integers(0, 5, 1001)  # shards straddle class boundaries
    parts = Shards(10, shards_per_node=3, seed=1).split(labels)
    _check_cover(parts, len(labels))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 3
    # a node's rows span at most its 3 shards, so at most 3 + (classes crossed) labels; far from IID
    assert np.mean([len(np.unique(labels[p])) for p in parts]) < 3


def test_shards_errors():
    with pytest.raises(ValueError, match="lower shards_per_node to <= 5"):
        Shards(10, shards_per_node=6).split(np.zeros(50, int))
    with pytest.raises(ValueError, match="shards_per_node must be a positive integer"):
        Shards(10, shards_per_node=0)


# -- label quantity (#C=k, NIID-Bench) --------------------------------------------------------


@pytest.mark.parametrize("num_partitions,k", [(10, 1), (13, 1), (8, 2), (8, 3), (30, 2), (4, 3), (5, 2), (3, 10)])
def test_label_quantity_gives_exactly_k_classes_per_node(num_partitions, k):
    labels = DATA["label"]
    for seed in range(3):
        p = LabelQuantity(num_partitions, labels_per_node=k, seed=seed)
        parts = p.split(labels)
        _check_cover(parts, N)
        assert [len(np.unique(labels[q])) for q in parts] == [k] * num_partitions
        held = p.classes(labels)
        assert all(np.array_equal(np.unique(labels[q]), h) for q, h in zip(parts, held))
        # each class's rows are split evenly (within 1) among the nodes that hold it
        for c in range(NUM_CLASSES):
            shares = [np.sum(labels[q] == c) for q, h in zip(parts, held) if c in h]
            assert max(shares) - min(shares) <= 1


def test_label_quantity_errors():
    labels = DATA["label"]
    with pytest.raises(ValueError, match="labels_per_node >= 4 or at least 5 partitions"):
        LabelQuantity(3, labels_per_node=2).split(labels)  # 6 slots for 10 classes
    with pytest.raises(ValueError, match="only 10 classes"):
        LabelQuantity(3, labels_per_node=11).split(labels)
    with pytest.raises(ValueError, match="some would get none of it"):
        LabelQuantity(100, labels_per_node=9).split(labels)  # ~90 holders per class of 60 rows


# -- quantity skew -----------------------------------------------------------------------------


def _size_cv(p: QuantitySkew, n: int, seeds=range(6)) -> float:
    """Coefficient of variation of the node sizes, averaged over seeds."""
    return float(np.mean([np.std(sz) / np.mean(sz) for sz in (replace(p, seed=s).sizes(n) for s in seeds)]))


def test_quantity_skew_grows_with_sigma_and_respects_the_minimum():
    cv = {s: _size_cv(QuantitySkew(20, sigma=s, min_partition_size=10), N) for s in (0.0, 0.5, 2.0)}
    assert cv[0.0] < 0.01  # sigma 0: equal sizes
    assert cv[0.0] < cv[0.5] < cv[2.0]
    for seed in range(6):
        parts = QuantitySkew(20, sigma=3.0, seed=seed, min_partition_size=10).split(DATA)
        _check_cover(parts, N)
        assert min(len(p) for p in parts) >= 10
        assert [len(p) for p in parts] == list(QuantitySkew(20, sigma=3.0, seed=seed, min_partition_size=10).sizes(N))


def test_quantity_skew_powerlaw_and_dirichlet():
    pl = {
        a: _size_cv(QuantitySkew(20, distribution="powerlaw", exponent=a, min_partition_size=1), N) for a in (0.8, 5.0)
    }
    assert pl[0.8] > pl[5.0]  # heavier tail, more skew
    dr = {
        a: _size_cv(QuantitySkew(20, distribution="dirichlet", alpha=a, min_partition_size=1), N) for a in (0.2, 50.0)
    }
    assert dr[0.2] > dr[50.0]


def test_quantity_skew_rows_are_iid():
    # label mix on big nodes matches the global mix: only sizes are skewed
    labels = np.random.default_rng(0).integers(0, 2, 20000)
    parts = QuantitySkew(5, sigma=1.0, seed=0).split(labels)
    assert all(abs(labels[p].mean() - labels.mean()) < 0.05 for p in parts if len(p) > 1000)


def test_quantity_skew_errors():
    with pytest.raises(ValueError, match="sigma applies to distribution='lognormal'"):
        QuantitySkew(4, distribution="powerlaw", sigma=1.0)
    with pytest.raises(ValueError, match="distribution must be one of"):
        QuantitySkew(4, distribution="zipf")
    with pytest.raises(ValueError, match="sigma must be a number >= 0"):
        QuantitySkew(4, sigma=-1.0)
    with pytest.raises(ValueError, match="exponent must be a positive number"):
        QuantitySkew(4, distribution="powerlaw", exponent=0)
    with pytest.raises(ValueError, match="lower min_partition_size to <= 60"):
        QuantitySkew(10, min_partition_size=61).split(DATA)


# -- natural id ----------------------------------------------------------------------------------


def test_natural_id_one_partition_per_id_sorted_by_id():
    writer = DATA["writer"]
    p = NaturalId("writer")
    parts = p.split(DATA)
    ids = p.ids(DATA)
    _check_cover(parts, N)
    assert np.array_equal(ids, np.unique(writer)) and len(parts) == len(ids)
    for wid, part in zip(ids, parts):
        assert np.array_equal(part, np.flatnonzero(writer == wid))  # all rows of one id, only those


def test_natural_id_string_ids_and_errors():
    names = np.array(["bob", "al", "bob", "cy", "al", "al"])
    parts = NaturalId("user").split({"user": names, "label": np.zeros(6, int)})
    assert _same(parts, [np.array([1, 4, 5]), np.array([0, 2]), np.array([3])])
    with pytest.raises(ValueError, match="set num_partitions=25 or leave it None"):
        NaturalId("writer", num_partitions=10).split(DATA)
    assert len(NaturalId("writer", num_partitions=25).split(DATA)) == 25
    with pytest.raises(KeyError, match="no column 'speaker'"):
        NaturalId("speaker").split(DATA)
    with pytest.raises(ValueError, match="must be one-dimensional"):
        NaturalId("x").split(DATA)


# -- feature skew (FCUBE) -------------------------------------------------------------------------


def _signs(X: np.ndarray, features) -> list[tuple[int, ...]]:
    return [tuple(int(v) for v in row) for row in np.where(X[:, list(features)] > 0, 1, -1)]


def test_feature_skew_fcube_octant_pairs():
    X = np.random.default_rng(0).uniform(-1, 1, size=(4000, 3))
    y = (X[:, 0] < 0).astype(int)
    for seed in range(4):
        p = FeatureSkew(4, seed=seed)
        parts = p.split((X, y))
        _check_cover(parts, len(X))
        patterns = p.patterns()
        for part, pats in zip(parts, patterns):
            assert len(pats) == 2 and pats[0] == tuple(-s for s in pats[1])  # an octant and its opposite
            assert set(_signs(X[part], (0, 1, 2))) == set(pats)
            assert set(y[part]) == {0, 1}  # FCUBE: every party sees both labels
    every_octant = sorted(itertools.product((-1, 1), repeat=3))
    assert sorted(s for pats in FeatureSkew(4).patterns() for s in pats) == every_octant


def test_feature_skew_unpaired_patterns_round_robin():
    X = DATA["x"]
    p = FeatureSkew(3, features=(1, 3), pair_opposites=False, seed=2)  # 4 patterns over 3 nodes
    parts = p.split(DATA)
    _check_cover(parts, N)
    assert sorted(len(pats) for pats in p.patterns()) == [1, 1, 2]
    for part, pats in zip(parts, p.patterns()):
        assert set(_signs(X[part], (1, 3))) <= set(pats)


def test_feature_skew_errors():
    with pytest.raises(ValueError, match="use at most 4 partitions"):
        FeatureSkew(5, features=(0, 1, 2))
    with pytest.raises(ValueError, match="out of range: the data has 4 features"):
        FeatureSkew(2, features=(0, 7)).split(DATA)
    X = np.abs(DATA["x"])  # every row in the all-positive orthant
    with pytest.raises(ValueError, match="got no rows"):
        FeatureSkew(2, features=(0, 1)).split((X, DATA["label"]))
    with pytest.raises(ValueError, match="distinct column indices"):
        FeatureSkew(2, features=(0, 0))


# -- vertical split -------------------------------------------------------------------------------


def test_vertical_split_covers_each_feature_once():
    X = np.zeros((10, 2, 5))  # features() flattens to 10 columns
    for seed in range(3):
        groups = VerticalSplit(3, seed=seed).split((X, np.zeros(10, int)))
        _check_cover(groups, 10)
        assert sorted(len(g) for g in groups) == [3, 3, 4]
    assert _same(VerticalSplit(3, seed=1).split(10), VerticalSplit(3, seed=1).split((X, np.zeros(10, int))))
    assert not _same(VerticalSplit(3, seed=1).split(10), VerticalSplit(3, seed=2).split(10))


def test_vertical_split_explicit_groups_and_errors():
    assert _same(VerticalSplit(2, columns=[[3, 0], [1, 2]]).split(DATA), [np.array([0, 3]), np.array([1, 2])])
    with pytest.raises(ValueError, match=r"missing \[3\], repeated \[1\]"):
        VerticalSplit(2, columns=[[0, 1], [1, 2]]).split(DATA)
    with pytest.raises(ValueError, match="out of range"):
        VerticalSplit(2, columns=[[0, 1], [2, 3, 4]]).split(DATA)
    with pytest.raises(ValueError, match="one group per partition"):
        VerticalSplit(3, columns=[[0, 1], [2, 3]])
    with pytest.raises(ValueError, match="use at most 4 partitions"):
        VerticalSplit(5).split(DATA)


# -- config errors shared by all ----------------------------------------------------------------


@pytest.mark.parametrize(
    "cls", [IID, DirichletPerNode, Shards, LabelQuantity, QuantitySkew, FeatureSkew, VerticalSplit]
)
def test_num_partitions_must_be_positive(cls):
    kwargs = {"alpha": 0.5} if cls is DirichletPerNode else {}
    with pytest.raises(ValueError, match="num_partitions must be a positive integer"):
        cls(0, **kwargs)
    with pytest.raises(ValueError, match="num_partitions must be a positive integer"):
        cls(2.5, **kwargs)


@pytest.mark.parametrize(
    "p",
    [
        IID(7),
        DirichletPerNode(7, 1.0),
        Shards(7, shards_per_node=1),
        LabelQuantity(7, 1),
        QuantitySkew(7, min_partition_size=0),
    ],
)
def test_more_partitions_than_rows_is_a_clear_error(p):
    with pytest.raises(ValueError, match="use at most 6 partitions"):
        p.split(np.arange(6) % 2)
