"""See how a partitioning spreads the labels: counts per node, a summary table, a plot.

::

    from corolla.data import Dirichlet
    from corolla.data.inspection import label_counts, plot_counts, summary_table

    parts = Dirichlet(num_partitions=20, alpha=0.5).split((X, y))
    counts, classes = label_counts((X, y), parts)       # (20, num_classes) and the class values
    print(summary_table(counts, classes))
    plot_counts(counts, classes, "heatmap.png", kind="heatmap")

Pure functions: no global state (matplotlib is used through a `Figure`, never `pyplot`).
The command line does the same: ``corolla data inspect --help``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .sources import as_source, labels_of

__all__ = ["counts_figure", "label_counts", "plot_counts", "summary_table"]

#: plots show at most this many nodes (the first ones) and say so in the title
MAX_PLOTTED_NODES = 100


def label_counts(data: Any, partitions: Sequence[np.ndarray], label: str = "label") -> tuple[np.ndarray, np.ndarray]:
    """``(counts, classes)``: ``counts[i, j]`` is how many rows of partition ``i`` have label ``classes[j]``.

    `data` is anything `corolla.data.as_source` takes, or the labels themselves (a 1-D
    array); `partitions` are row-index arrays as a partitioner returns them. `classes` are the
    sorted distinct labels of the whole of `data`, so a class that no partition holds still
    gets a column (of zeros). `counts` is int64 of shape (num_partitions, num_classes).
    """
    labels = np.asarray(labels_of(as_source(data, label=label)))
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    classes, codes = np.unique(labels, return_inverse=True)
    codes = codes.reshape(-1)
    k = len(classes)
    counts = np.zeros((len(partitions), k), dtype=np.int64)
    for i, p in enumerate(partitions):
        p = np.asarray(p)
        if p.size and (p.min() < 0 or p.max() >= len(labels)):
            raise ValueError(f"partition {i} has row indices outside 0..{len(labels) - 1}")
        counts[i] = np.bincount(codes[p.astype(np.int64, copy=False)], minlength=k)
    return counts, classes


def _stats(values: np.ndarray) -> str:
    if len(values) == 0:
        return "-"
    return f"{values.min():g} / {np.median(values):g} / {values.max():g}"


def _label(c: Any) -> str:
    return str(c.item() if hasattr(c, "item") else c)


def summary_table(
    counts: np.ndarray,
    classes: Sequence[Any],
    *,
    top: int = 3,
    max_rows: int | None = 100,
    title: str | None = None,
    width: int = 100,
) -> str:
    """A text table, one row per node: size, number of classes held, the `top` classes.

    The footer gives min / median / max over all nodes (also those past `max_rows`, which
    are left out of the body with a note saying how many).
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] != len(classes):
        raise ValueError(f"counts must have shape (nodes, {len(classes)}), got {counts.shape}")
    n = counts.shape[0]
    sizes = counts.sum(axis=1)
    held = (counts > 0).sum(axis=1)
    total = int(sizes.sum())
    stats = f"{n} nodes, {total} examples, {len(classes)} classes"
    if max_rows is not None and n > max_rows:
        stats += f"; first {max_rows} nodes shown"
    t = Table(
        title=title or stats,
        caption=stats if title else None,
        show_footer=True,
        box=box.SIMPLE_HEAD,
    )
    t.add_column("node", footer="min / median / max")
    t.add_column("size", footer=_stats(sizes), justify="right")
    t.add_column("classes", footer=_stats(held), justify="right")
    t.add_column(f"top {top} classes (count, share)", footer="")
    shown = n if max_rows is None else min(n, max_rows)
    for i in range(shown):
        row = counts[i]
        order = np.argsort(-row, kind="stable")[:top]
        tops = ", ".join(
            f"{_label(classes[j])}: {row[j]} ({row[j] / max(sizes[i], 1):.0%})" for j in order if row[j] > 0
        )
        t.add_row(str(i), str(int(sizes[i])), str(int(held[i])), tops)
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, force_terminal=False, highlight=False).print(t)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"


def plot_counts(
    counts: np.ndarray,
    classes: Sequence[Any],
    path: str | Path,
    kind: str = "bar",
    *,
    max_nodes: int = MAX_PLOTTED_NODES,
    title: str | None = None,
) -> Path:
    """Write a PNG (or any format matplotlib knows from the suffix) of the label counts per node.

    ``kind="bar"``: one stacked bar per node, one colour per class. ``kind="heatmap"``: nodes
    along x, classes along y, colour = count (numbers written in the cells when they fit).
    With more than `max_nodes` nodes only the first `max_nodes` are drawn; the title says so.
    Needs matplotlib (``pip install 'corolla[plot]'``). Returns the path written.
    """
    fig = counts_figure(counts, classes, kind, max_nodes=max_nodes, title=title)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def counts_figure(
    counts: np.ndarray,
    classes: Sequence[Any],
    kind: str = "bar",
    *,
    max_nodes: int = MAX_PLOTTED_NODES,
    title: str | None = None,
) -> Any:
    """The matplotlib ``Figure`` that `plot_counts` saves (for notebooks: display or restyle it)."""
    if kind not in ("bar", "heatmap"):
        raise ValueError(f"kind must be 'bar' or 'heatmap', got {kind!r}")
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'corolla[plot]'") from None
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] != len(classes):
        raise ValueError(f"counts must have shape (nodes, {len(classes)}), got {counts.shape}")
    n_all, k = counts.shape
    n = min(n_all, max_nodes)
    shown = counts[:n]
    names = [_label(c) for c in classes]
    head = title or f"label counts per node ({kind})"
    head += f": first {n} of {n_all} nodes" if n < n_all else f": {n_all} nodes"

    width = min(max(6.0, 0.2 * n + 2.5), 18.0)
    if kind == "bar":
        fig = Figure(figsize=(width, 4.5))
        ax = fig.add_subplot()
        cmap = _cmap(k)
        x = np.arange(n)
        bottom = np.zeros(n)
        for j in range(k):
            ax.bar(x, shown[:, j], bottom=bottom, width=0.85, color=cmap(j), label=names[j], linewidth=0)
            bottom += shown[:, j]
        ax.set_ylabel("examples")
        if k <= 20:
            ax.legend(title="class", fontsize="small", bbox_to_anchor=(1.01, 1), loc="upper left", frameon=False)
    else:
        height = min(max(3.0, 0.3 * k + 1.5), 16.0)
        fig = Figure(figsize=(width + 1.5, height))
        ax = fig.add_subplot()
        im = ax.imshow(shown.T, aspect="auto", cmap="viridis", interpolation="nearest", origin="lower")
        fig.colorbar(im, ax=ax, label="examples")
        ax.set_yticks(np.arange(k) if k <= 40 else np.linspace(0, k - 1, 10).astype(int))
        ax.set_yticklabels([names[j] for j in ax.get_yticks().astype(int)])
        ax.set_ylabel("class")
        if n <= 30 and k <= 20:
            top = shown.max() if shown.size else 0
            for i in range(n):
                for j in range(k):
                    if shown[i, j]:
                        light = shown[i, j] < 0.6 * top
                        ax.text(
                            i,
                            j,
                            str(shown[i, j]),
                            ha="center",
                            va="center",
                            fontsize=6,
                            color="white" if light else "black",
                        )
    ticks = np.arange(n) if n <= 40 else np.unique(np.linspace(0, n - 1, 20).astype(int))
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(i) for i in ticks], fontsize="small")
    ax.set_xlabel("node")
    ax.set_title(head)
    fig.tight_layout()
    return fig


def _cmap(k: int):
    from matplotlib import colormaps

    if k <= 10:
        return colormaps["tab10"]
    if k <= 20:
        return colormaps["tab20"]
    base = colormaps["viridis"]
    return lambda j: base(j / max(k - 1, 1))
