"""Partitioning speed and memory, as one JSON line.

    python benchmarks/partition.py
    python benchmarks/partition.py --rows 1000000 --nodes 10000 --classes 10 --features 32

Workload: an (X, y) data set of `rows` rows, X float32 of `features` columns (1e6 x 32 =
128 MB), y uniform over `classes` labels. Each partitioner splits it into `nodes` nodes;
times are the median of `repeats` calls (`*_s`, with min and max in `*_s_all`).

floor_s: one pass over the labels (`np.bincount(y)`), the least any label-based split must
read. data_copied: whether splitting (X, y) allocated anything near the size of X: the
tracemalloc peak of one Dirichlet split of (X, y) (`split_peak_mib`, numpy reports its
buffers to tracemalloc) against `x_mib`, and the growth of the process's peak RSS during
that split (`split_rss_growth_mib`).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
import tracemalloc

import numpy as np

from corolla.data.partitioners import (
    IID,
    Dirichlet,
    DirichletPerNode,
    LabelQuantity,
    QuantitySkew,
    Shards,
)


def _median_time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), [round(x, 4) for x in times]


def _maxrss_mib() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--features", type=int, default=32)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    gen = np.random.default_rng(0)
    y = gen.integers(0, args.classes, args.rows)
    X = np.empty((args.rows, args.features), dtype=np.float32)
    X[:] = 1.0  # touch every page, so RSS holds X before the split
    data = (X, y)
    J = args.nodes

    dirichlet = Dirichlet(J, alpha=args.alpha, seed=0, min_partition_size=0)
    cases = {
        "dirichlet": dirichlet,
        "iid": IID(J, seed=0),
        "dirichlet_self_balancing": Dirichlet(J, alpha=args.alpha, seed=0, min_partition_size=0, self_balancing=True),
        "dirichlet_per_node": DirichletPerNode(J, alpha=args.alpha, seed=0),
        "shards": Shards(J, shards_per_node=2, seed=0),
        "label_quantity": LabelQuantity(J, labels_per_node=2, seed=0),
        "quantity_skew": QuantitySkew(J, sigma=1.0, seed=0, min_partition_size=0),
    }
    floor_s, floor_all = _median_time(lambda: np.bincount(y), max(args.repeats, 5))
    out: dict[str, object] = {
        "rows": args.rows,
        "nodes": J,
        "classes": args.classes,
        "alpha": args.alpha,
        "repeats": args.repeats,
        "floor_s": round(floor_s, 5),
        "floor_s_all": [round(t, 5) for t in floor_all],
    }
    # memory first: the process's first split, so its peak-RSS growth is its own
    rss_before = _maxrss_mib()
    tracemalloc.start()
    parts = dirichlet.split(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_growth = _maxrss_mib() - rss_before
    assert sum(len(q) for q in parts) == args.rows and len(parts) == J
    memory = {
        "x_mib": round(X.nbytes / 2**20, 1),
        "y_mib": round(y.nbytes / 2**20, 1),
        "split_peak_mib": round(peak / 2**20, 1),
        "split_result_mib": round(sum(q.nbytes for q in parts) / 2**20, 1),  # the returned indices
        "split_rss_growth_mib": round(rss_growth, 1),
        "data_copied": bool(peak >= 0.5 * X.nbytes),
    }
    del parts

    for name, p in cases.items():
        med, every = _median_time(lambda p=p: p.split(data), args.repeats)
        out[f"{name}_s"] = round(med, 4)
        out[f"{name}_s_all"] = every
        out[f"{name}_ratio_to_floor"] = round(med / floor_s, 1)
    out.update(memory)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
