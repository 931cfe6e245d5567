"""Inspection of partitions: label counts, the summary table, plots, `corolla data inspect`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from corolla.data.inspection import counts_figure, label_counts, plot_counts, summary_table

CLI = [sys.executable, "-m", "corolla.cli.main"]
PNG = b"\x89PNG\r\n\x1a\n"


def corolla(*args, timeout=120, env=None):
    env = None if env is None else {**os.environ, **env}
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


def test_label_counts_by_hand():
    labels = np.array([0, 1, 1, 2, 2, 2, 5])
    parts = [np.array([0, 1]), np.array([2, 3, 4]), np.array([5, 6])]
    counts, classes = label_counts(labels, parts)
    assert classes.tolist() == [0, 1, 2, 5]
    assert counts.tolist() == [[1, 1, 0, 0], [0, 1, 2, 0], [0, 0, 1, 1]]
    assert counts.dtype == np.int64

    # any source, any label column, string labels, a class no partition holds
    cols = {"x": np.zeros((5, 2)), "kind": np.array(["b", "a", "b", "c", "a"])}
    counts, classes = label_counts(cols, [np.array([0, 2]), np.array([1, 4])], label="kind")
    assert classes.tolist() == ["a", "b", "c"]
    assert counts.tolist() == [[0, 2, 0], [2, 0, 0]]
    counts, _ = label_counts((np.zeros((3, 1)), np.array([1, 1, 0])), [np.array([0, 1, 2])])
    assert counts.tolist() == [[1, 2]]

    with pytest.raises(ValueError, match="outside"):
        label_counts(labels, [np.array([0, 7])])


def test_summary_table_shows_sizes_and_stats():
    counts = np.array([[5, 0, 1], [0, 7, 7], [2, 2, 2]])
    table = summary_table(counts, np.array([0, 1, 2]))
    assert "3 nodes, 26 examples, 3 classes" in table
    for size in ("6", "14"):
        assert size in table
    assert "min / median / max" in table and "6 / 6 / 14" in table  # node sizes
    assert "1: 7 (50%)" in table  # top classes of node 1

    big = np.ones((150, 2), dtype=np.int64)
    assert "first 100 nodes shown" in summary_table(big, [0, 1])
    with pytest.raises(ValueError, match="shape"):
        summary_table(counts, [0, 1])


@pytest.mark.parametrize("kind", ["bar", "heatmap"])
def test_plot_writes_png(tmp_path, kind):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 20, size=(12, 10))
    out = plot_counts(counts, np.arange(10), tmp_path / f"{kind}.png", kind=kind)
    assert out.read_bytes()[:8] == PNG

    many = rng.integers(0, 5, size=(150, 3))
    fig = counts_figure(many, ["a", "b", "c"], kind)
    assert "first 100 of 150 nodes" in fig.axes[0].get_title()
    assert plot_counts(many, ["a", "b", "c"], tmp_path / "many.png", kind=kind).read_bytes()[:8] == PNG


def test_plot_rejects_unknown_kind(tmp_path):
    with pytest.raises(ValueError, match="bar"):
        plot_counts(np.ones((2, 2)), [0, 1], tmp_path / "x.png", kind="pie")


# -- the command ---------------------------------------------------------------------------


def test_cli_inspect_reproduces_the_demo_partitioning(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    from corolla.data import digits

    png = tmp_path / "x.png"
    args = ["data", "inspect", "--data", "digits", "--partitioner", "dirichlet", "alpha=0.5", "--nodes", "20"]
    p = corolla(*args, "--seed", "0", "-o", png)
    assert p.returncode == 0, p.stderr
    assert png.read_bytes()[:8] == PNG
    assert "min / median / max" in p.stdout and f"wrote {png}" in p.stdout

    p = corolla(*args, "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["num_nodes"] == 20 and out["classes"] == list(range(10))
    assert out["partitioner"]["alpha"] == 0.5 and out["partitioner"]["seed"] == 0

    # examples/sklearn-digits: 20 nodes, dirichlet-alpha 0.5, run seed 0 -> load_digits_partition
    _, y = digits._load()
    demo = digits._partitions(20, 0.5, 0, 0.2)
    assert out["counts"] == [np.bincount(y[idx], minlength=10).tolist() for idx in demo]
    for node in (0, 7, 19):  # and what each demo node actually trains and tests on
        _, y_train, _, y_test = digits.load_digits_partition(node, 20, alpha=0.5, seed=0)
        assert np.bincount(np.concatenate([y_train, y_test]), minlength=10).tolist() == out["counts"][node]


def test_cli_inspect_csv_file(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("datasets")
    path = tmp_path / "flowers.csv"
    pd.DataFrame({"x": np.arange(60), "species": np.repeat(["a", "b", "c"], 20)}).to_csv(path, index=False)
    args = ["--data", path, "--label", "species", "--partitioner", "iid", "--nodes", "3", "--json"]
    p = corolla("data", "inspect", *args, env={"HF_DATASETS_CACHE": str(tmp_path / "hf-cache")})
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["classes"] == ["a", "b", "c"] and out["sizes"] == [20, 20, 20]


def test_cli_inspect_synthetic(tmp_path):
    pytest.importorskip("corolla.data.fcube")
    p = corolla("data", "inspect", "--data", "fcube", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["num_nodes"] == 4 and out["partitioner"]["name"] == "natural"
    assert all(abs(a - b) <= 1 for a, b in out["counts"])  # FCUBE: labels balanced within every party


def test_cli_inspect_help_and_errors():
    p = corolla("data", "inspect", "--help")
    assert p.returncode == 0
    assert "corolla data inspect --data digits --partitioner dirichlet alpha=0.5 --nodes 20" in p.stdout
    assert "example" in corolla("data", "--help").stdout

    p = corolla("data", "inspect", "--data", "digits", "--partitioner", "nope")
    assert p.returncode == 2 and p.stderr.startswith("error: unknown partitioner 'nope'")
    p = corolla("data", "inspect", "--data", "digits", "--partitioner", "dirichlet")
    assert p.returncode == 2 and "alpha=" in p.stderr
    p = corolla("data", "inspect", "--data", "missing-dir/train.csv")
    assert p.returncode == 2 and "no file or directory" in p.stderr
    assert corolla("data").returncode == 2
