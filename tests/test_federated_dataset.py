"""FederatedDataset: local files, in-memory data, laziness, caching, offline hub names, nodes."""

from __future__ import annotations

import dataclasses
import socket
import time

import numpy as np
import pytest

from corolla.client.context import Context
from corolla.data import IID, Dirichlet, RowsView, federated
from corolla.data.federated import DatasetUnavailable, FederatedDataset, clear_cache

datasets = pytest.importorskip("datasets")
pd = pytest.importorskip("pandas")


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


@pytest.fixture
def hf_cache(tmp_path):
    """Keep the Arrow files datasets writes for local files out of ~/.cache."""
    return str(tmp_path / "hf-cache")


def _frame(n: int = 240, num_classes: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "id": np.arange(n),
            "x0": rng.normal(size=n),
            "x1": rng.normal(size=n),
            "label": rng.permutation(np.arange(n) % num_classes),
            "writer": np.arange(n) % 5,
        }
    )


def _write(df: pd.DataFrame, path) -> None:
    suffix = path.suffix
    if suffix == ".csv":
        df.to_csv(path, index=False)
    elif suffix == ".parquet":
        df.to_parquet(path)
    else:
        df.to_json(path, orient="records", lines=True)


def _check_cover(parts, n: int) -> None:
    assert sum(len(p) for p in parts) == n
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_local_file_partitions_match_the_partitioner(tmp_path, hf_cache, suffix):
    df = _frame()
    path = tmp_path / f"train{suffix}"
    _write(df, path)
    part = Dirichlet(num_partitions=6, alpha=0.5, seed=1)
    fds = FederatedDataset(str(path), part, cache_dir=hf_cache)

    parts = fds.partitions()
    _check_cover(parts, len(df))
    expected = part.split(df["label"].to_numpy())  # the same split on the same labels
    assert all(np.array_equal(a, b) for a, b in zip(parts, expected))
    assert fds.num_partitions == 6 and fds.partition_sizes() == [len(p) for p in expected]

    for i in range(6):
        rows = fds.load_partition(i)
        assert isinstance(rows, datasets.Dataset)
        assert rows["id"] == df["id"].to_numpy()[parts[i]].tolist()  # only this partition's rows
        assert rows["label"] == df["label"].to_numpy()[parts[i]].tolist()
    assert len(fds.load_split()) == len(df)


def test_path_objects_and_directories_with_splits(tmp_path, hf_cache):
    df = _frame()
    d = tmp_path / "data"
    d.mkdir()
    df.to_csv(d / "train.csv", index=False)
    df.iloc[:30].to_csv(d / "test.csv", index=False)
    fds = FederatedDataset(d, IID(4), cache_dir=hf_cache)  # a pathlib.Path
    _check_cover(fds.partitions(), len(df))
    test = fds.load_split("test")
    assert test["id"] == list(range(30))
    single = FederatedDataset(d / "train.csv", IID(4), cache_dir=hf_cache)
    with pytest.raises(ValueError, match="only the 'train' split"):
        single.load_split("test")


def test_numpy_arrays(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(100, 3)).astype(np.float32), np.repeat(np.arange(4), 25)
    fds = FederatedDataset((X, y), IID(5, seed=2))
    parts = IID(5, seed=2).split(y)
    for i in range(5):
        view = fds.load_partition(i)
        assert isinstance(view, RowsView)
        Xi, yi = view.arrays()
        np.testing.assert_array_equal(Xi, X[parts[i]])
        np.testing.assert_array_equal(yi, y[parts[i]])
    assert fds.load_split().arrays()[0].shape == X.shape
    with pytest.raises(ValueError, match="one split"):
        fds.load_split("test")


def test_hf_dataset_in_memory_and_dataset_dict():
    n = 90
    ds = datasets.Dataset.from_dict({"x": np.arange(n).tolist(), "y": (np.arange(n) % 3).tolist()})
    fds = FederatedDataset(ds, Dirichlet(3, 1.0, seed=0), label="y")
    parts = Dirichlet(3, 1.0, seed=0).split(np.arange(n) % 3)
    for i in range(3):
        rows = fds.load_partition(i)
        assert isinstance(rows, datasets.Dataset)
        assert rows["x"] == parts[i].tolist()
    dd = datasets.DatasetDict({"train": ds, "test": ds.select(range(10))})
    fds = FederatedDataset(dd, IID(3), label="y")
    assert len(fds.load_split("test")) == 10 and sum(fds.partition_sizes()) == n


def test_torch_dataset():
    torch = pytest.importorskip("torch")
    from torch.utils.data import Subset, TensorDataset

    X, y = torch.arange(40, dtype=torch.float32).reshape(20, 2), torch.arange(20) % 2
    fds = FederatedDataset(TensorDataset(X, y), IID(4))
    sub = fds.load_partition(1)
    assert isinstance(sub, Subset)
    assert [int(sub[j][0][0]) // 2 for j in range(len(sub))] == IID(4).split(np.zeros(20))[1].tolist()


@dataclasses.dataclass(frozen=True)
class CountingIID:
    """IID that counts its split calls (class attribute: frozen dataclasses stay hashable)."""

    num_partitions: int
    calls = [0]

    def split(self, data):
        CountingIID.calls[0] += 1
        return IID(self.num_partitions).split(data)


def test_lazy_and_cached_per_process(tmp_path, hf_cache, monkeypatch):
    df = _frame()
    path = tmp_path / "train.csv"
    _write(df, path)
    loads = []
    real = datasets.load_dataset

    def counting(*a, **kw):
        loads.append((a, kw.get("split")))
        return real(*a, **kw)

    monkeypatch.setattr(datasets, "load_dataset", counting)
    CountingIID.calls[0] = 0

    fds = FederatedDataset(str(path), CountingIID(4), cache_dir=hf_cache)
    assert fds.num_partitions == 4 and loads == []  # nothing loaded yet
    with pytest.raises(ValueError, match=r"0\.\.3"):
        fds.load_partition(7)
    assert loads == []  # a bad id is caught before loading

    fds.load_partition(0)
    fds.load_partition(3)
    assert fds.partition_sizes() == [60] * 4
    assert len(loads) == 1 and CountingIID.calls[0] == 1

    # a node building the same data set again (e.g. in every round's handler) reuses both
    again = FederatedDataset(str(path), CountingIID(4), cache_dir=hf_cache)
    np.testing.assert_array_equal(again.load_partition(2)["id"], fds.load_partition(2)["id"])
    assert len(loads) == 1 and CountingIID.calls[0] == 1

    # another partitioner: same data, new split
    other = FederatedDataset(str(path), CountingIID(3), cache_dir=hf_cache)
    assert len(other.partitions()) == 3
    assert len(loads) == 1 and CountingIID.calls[0] == 2


def test_missing_path_fails_at_first_use(tmp_path):
    fds = FederatedDataset(str(tmp_path / "nope.csv"), IID(2))  # constructing reads nothing
    with pytest.raises(ValueError, match="no file or directory"):
        fds.load_partition(0)


@pytest.mark.parametrize("bad", [-1, 4, 1.5, True, "1"])
def test_partition_id_out_of_range(bad):
    fds = FederatedDataset((np.zeros((8, 2)), np.arange(8) % 2), IID(4))
    with pytest.raises(ValueError, match=r"partition_id must be an integer in 0\.\.3"):
        fds.load_partition(bad)


def _offline_flag():
    cfg = datasets.config  # HF_DATASETS_OFFLINE in older datasets
    return getattr(cfg, "HF_HUB_OFFLINE", getattr(cfg, "HF_DATASETS_OFFLINE", None))


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_hub_name_without_network_fails_fast_and_plainly(monkeypatch):
    # the hub endpoint is a closed local port: "no network", whatever the machine has
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    before = _offline_flag()
    fds = FederatedDataset("corolla-test/does-not-exist", IID(3))
    t = time.monotonic()
    with pytest.raises(DatasetUnavailable) as info:
        fds.load_partition(0)
    assert time.monotonic() - t < 30
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "could not download 'corolla-test/does-not-exist' from the Hugging Face hub (no network?)" in msg
    assert "pass a local path (CSV/Parquet/JSON) or an in-memory data set instead" in msg
    assert _offline_flag() == before  # offline mode was only borrowed


def test_hub_unreachable_loads_from_the_local_cache_offline(monkeypatch):
    monkeypatch.setattr(federated, "_probe_hub", lambda: "cannot reach the hub (test)")
    seen = []

    def cached(name, split, **kw):  # what datasets does offline when the data set is cached
        seen.append(_offline_flag())
        return datasets.Dataset.from_dict({"label": [0, 1, 0, 1, 2, 2]})

    monkeypatch.setattr(datasets, "load_dataset", cached)
    before = _offline_flag()
    fds = FederatedDataset("corolla-test/cached", IID(2))
    assert fds.partition_sizes() == [3, 3]
    assert seen == [True] and _offline_flag() == before


def test_hub_errors_after_a_good_probe(monkeypatch):
    """The hub looked reachable but the download failed: still say so plainly."""
    monkeypatch.setattr(federated, "_probe_hub", lambda: None)

    def failing(name, split, **kw):
        if name == "corolla-test/gone":
            raise FileNotFoundError(f"Dataset '{name}' doesn't exist on the Hub")  # DatasetNotFoundError
        raise FileNotFoundError(
            "Couldn't find 'x' on the Hugging Face Hub either: LocalEntryNotFoundError: Please check your connection"
        )

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(DatasetUnavailable, match=r"\(no network\?\)"):
        FederatedDataset("corolla-test/flaky", IID(2)).load_partition(0)
    with pytest.raises(DatasetUnavailable, match="no data set 'corolla-test/gone' on the Hugging Face hub"):
        FederatedDataset("corolla-test/gone", IID(2)).load_partition(0)


def test_hub_offline_env(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetUnavailable, match="offline mode"):
        FederatedDataset("corolla-test/does-not-exist", IID(3)).load_partition(0)


def test_load_for_checks_the_federation():
    y = np.arange(60) % 3
    fds = FederatedDataset((np.zeros((60, 2)), y), IID(4))
    ok = Context(node_id=7, node_config={"partition-id": 2, "num-partitions": 4})
    np.testing.assert_array_equal(fds.load_for(ok).indices, fds.load_partition(2).indices)

    wrong = Context(node_id=7, node_config={"partition-id": 2, "num-partitions": 3})
    with pytest.raises(ValueError, match=r"num-partitions=3, but the partitioner splits the data into 4"):
        fds.load_for(wrong)
    with pytest.raises(ValueError, match="--node-config partition-id=I,num-partitions=N"):
        fds.load_for(Context(node_id=7))


def test_natural_id_and_vertical():
    from corolla.data import partitioners

    if not hasattr(partitioners, "NaturalId"):
        pytest.skip("no NaturalId partitioner in this version")
    cols = {"x": np.zeros((30, 2)), "label": np.arange(30) % 2, "writer": np.arange(30) % 5}
    fds = FederatedDataset(cols, partitioners.NaturalId("writer"))
    assert fds.num_partitions == 5 and fds.partition_sizes() == [6] * 5
    np.testing.assert_array_equal(fds.load_partition(1)["writer"], np.full(6, 1))
    with pytest.raises(TypeError, match="feature columns"):
        FederatedDataset(cols, partitioners.VerticalSplit(2))
