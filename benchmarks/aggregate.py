"""Streaming weighted mean (`Mean`) against a numpy floor, one JSON line per client count C.

    python benchmarks/aggregate.py                      # C in {10, 100}, P = 1e7, 5 repetitions
    python benchmarks/aggregate.py --clients 10 --params 1e6 --reps 7 --flower

Workload (the same as Flower's in ../shared/reference/flower-bench-scripts/aggregate_cost.py):
C client updates of P float32 values in 4 arrays of P/4 (standard normal, seed 1), integer
weights drawn from [10, 1000). Everything is in memory before timing starts.

corolla_s: ``Mean.open`` + C ``Mean.add`` (each a corolla `Update` of the client's arrays,
weight = its example count) + ``Mean.result``, which returns the aggregate update
``mean - base`` as float32 arrays (the base is the zero model, so that is the weighted mean).

floor_s: the reference's floor, unchanged: a cache-blocked numpy weighted sum that reads each
client byte from memory once (per 64K-element block: ``acc_blk = w_0 * x_0``, then for every
other client ``tmp = w_i * x_i; acc_blk += tmp``, all in float32 with the normalized weights
precomputed), holding all C updates at once. It neither streams nor sums in float64 nor
subtracts a base, all of which `Mean` does.

Repetitions alternate (floor, corolla) after one warm-up of each, so machine noise hits both
alike; the JSON line carries medians and [min, max]. `ratio` = corolla_s / floor_s.

``--flower`` also times ``flwr.serverapp.strategy.strategy_utils.aggregate_arrayrecords``
(what Flower 1.42's FedAvg.aggregate_train calls; it includes one ``np.load`` per client array,
as on Flower's server) on the same data as RecordDicts, when ``flwr`` is importable
(``--flwr-path`` appends a site-packages directory to ``sys.path``), alternating with the floor
in a second phase: flower_s, flower_floor_s, flower_ratio.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time

import numpy as np

from corolla import Arrays
from corolla.strategies import Mean, Update
from corolla.strategies.base import RoundCtx

N_LAYERS = 4


def blocked_weighted_sum(arrays_per_client: list[list[np.ndarray]], weights: list[float], block: int = 1 << 16):
    """The reference's floor (aggregate_cost.py), verbatim: reads each client byte once."""
    out = []
    n_layers = len(arrays_per_client[0])
    tmp = np.empty(block, np.float32)
    for li in range(n_layers):
        size = arrays_per_client[0][li].size
        acc = np.empty(size, np.float32)
        for s in range(0, size, block):
            e = min(s + block, size)
            a = acc[s:e]
            t = tmp[: e - s]
            np.multiply(arrays_per_client[0][li][s:e], np.float32(weights[0]), out=a)
            for ci in range(1, len(arrays_per_client)):
                np.multiply(arrays_per_client[ci][li][s:e], np.float32(weights[ci]), out=t)
                np.add(a, t, out=a)
        out.append(acc)
    return out


def corolla_mean(mean: Mean, updates: list[Arrays], weights: list[int], base: Arrays) -> Arrays:
    ctx = RoundCtx(round=1, seed=0, num_nodes=len(updates))
    acc = mean.open({}, ctx)
    for i, (arrays, n) in enumerate(zip(updates, weights)):
        mean.add(acc, Update(node=i, arrays=arrays, base=base, weight=float(n)))
    out, _, _ = mean.result(acc, {}, ctx)
    return out


def summary(ts: list[float]) -> dict:
    return {"median": statistics.median(ts), "min": min(ts), "max": max(ts)}


def interleaved(fns: dict, reps: int) -> dict[str, list[float]]:
    """`reps` rounds of calling every fn once in turn (after one warm-up each): seconds per call."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    gc.collect()
    for _ in range(reps):
        for name, fn in fns.items():
            t = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - t)
            del out
            gc.collect()
    return times


def flower_fn(nd: list[list[np.ndarray]], weights: list[int]):
    """A zero-argument callable running Flower's FedAvg aggregation on RecordDicts, or None."""
    try:
        from flwr.app import ArrayRecord, MetricRecord, RecordDict
        from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
    except ImportError as e:
        print(json.dumps({"flower": f"not importable: {e}"}), file=sys.stderr)
        return None
    records = [
        RecordDict({"arrays": ArrayRecord(x), "metrics": MetricRecord({"num-examples": n})})
        for x, n in zip(nd, weights)
    ]
    return lambda: aggregate_arrayrecords(records, "num-examples")


def run(c: int, p: int, reps: int, mean: Mean, flower: bool, check: bool) -> dict:
    rng = np.random.default_rng(1)
    sizes = [p // N_LAYERS] * N_LAYERS
    sizes[-1] += p - sum(sizes)
    weights = [int(x) for x in rng.integers(10, 1000, size=c)]
    wsum = float(sum(weights))
    wfrac = [w / wsum for w in weights]
    nd = [[rng.standard_normal(s, dtype=np.float32) for s in sizes] for _ in range(c)]
    updates = [Arrays({f"layer{i}": x for i, x in enumerate(xs)}) for xs in nd]
    base = Arrays({f"layer{i}": np.zeros(s, np.float32) for i, s in enumerate(sizes)})

    floor = lambda: blocked_weighted_sum(nd, wfrac)  # noqa: E731
    times = interleaved({"floor": floor, "corolla": lambda: corolla_mean(mean, updates, weights, base)}, reps)
    s = {k: summary(v) for k, v in times.items()}
    rec = {
        "bench": "aggregate",
        "C": c,
        "P": p,
        "reps": reps,
        "window": mean.window,
        "window_bytes": mean.window_bytes,
        "corolla_s": s["corolla"]["median"],
        "floor_s": s["floor"]["median"],
        "ratio": s["corolla"]["median"] / s["floor"]["median"],
        "corolla_range_s": [s["corolla"]["min"], s["corolla"]["max"]],
        "floor_range_s": [s["floor"]["min"], s["floor"]["max"]],
        "corolla_GBps": c * p * 4 / s["corolla"]["median"] / 1e9,
    }
    # Flower separately (its decoding allocates a lot, which would disturb the pair above),
    # against the floor again
    if flower and (f := flower_fn(nd, weights)) is not None:
        times = interleaved({"floor": floor, "flower": f}, reps)
        fl = {k: summary(v) for k, v in times.items()}
        rec["flower_s"] = fl["flower"]["median"]
        rec["flower_floor_s"] = fl["floor"]["median"]
        rec["flower_ratio"] = fl["flower"]["median"] / fl["floor"]["median"]
        rec["flower_range_s"] = [fl["flower"]["min"], fl["flower"]["max"]]
    if check:  # against a float64 reference: sum(w * x) / sum(w), cast once
        out = corolla_mean(mean, updates, weights, base)
        worst, mismatched = 0.0, 0
        for i in range(N_LAYERS):
            ref = sum(np.float64(w) * xs[i].astype(np.float64) for xs, w in zip(nd, weights)) / wsum
            got = out[f"layer{i}"]
            worst = max(worst, float(np.max(np.abs(got - ref) / np.maximum(np.abs(ref), 1e-30))))
            mismatched += int(np.count_nonzero(got != ref.astype(np.float32)))
        rec["max_rel_err_vs_float64"] = worst
        rec["elements_differing_from_cast_reference"] = mismatched
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--params", type=float, default=1e7)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--window", type=int, default=Mean.window, help="Mean(window=...)")
    ap.add_argument("--window-bytes", type=int, default=Mean.window_bytes, help="Mean(window_bytes=...)")
    ap.add_argument("--flower", action="store_true", help="also time Flower's aggregate_arrayrecords")
    ap.add_argument("--flwr-path", default=None, help="a site-packages dir holding flwr (appended to sys.path)")
    ap.add_argument("--check", action="store_true", help="also compare the result with a float64 reference")
    args = ap.parse_args()
    if args.flwr_path:
        sys.path.append(args.flwr_path)
    mean = Mean(window=args.window, window_bytes=args.window_bytes)
    for c in args.clients:
        print(json.dumps(run(c, int(args.params), args.reps, mean, args.flower, args.check)), flush=True)
        gc.collect()


if __name__ == "__main__":
    main()
