"""Simulation overhead: corolla's round time against the bare compute floor, as one JSON line.

    python benchmarks/sim_overhead.py --nodes 1000 --params 1e4 --rounds 5 --backend process
    python benchmarks/sim_overhead.py --nodes 1000000 --params 1e4 --rounds 3 --sample 100

Workload (the same as ../shared/reference/flower-bench-scripts): each round K nodes (default:
all) receive a model of P float32 parameters in 4 arrays; `fit` adds small seeded noise and
returns it with num-examples=1; FedAvg aggregates; no federated evaluation.

floor_s: the same K fit calls in a plain loop split over the same number of worker processes,
each also reading every reply once (summing it into an accumulator): what any framework must
at least spend per round on this machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import threading
import time

import numpy as np
import psutil

T_PROCESS_START = psutil.Process().create_time()

from corolla import Arrays, ClientApp, FedAvg, Rounds, ServerApp, run_simulation  # noqa: E402
from corolla.workflows import NullObserver  # noqa: E402


def model(params: int) -> Arrays:
    sizes = [params // 2, params // 4, params // 8]
    sizes.append(params - sum(sizes))
    return Arrays({f"layer{i}": np.zeros(s, np.float32) for i, s in enumerate(sizes)})


def fit(arrays, rng: np.random.Generator) -> Arrays:
    out = Arrays()
    for k, v in arrays.items():
        out[k] = v + rng.standard_normal(v.shape, dtype=np.float32) * np.float32(0.01)
    return out


app = ClientApp()


@app.train
def train(msg, ctx):
    return msg.reply(arrays=fit(msg.content.arrays, ctx.rng()), metrics={"num-examples": 1})


class Timer(NullObserver):
    def __init__(self) -> None:
        self.starts: dict[int, float] = {}
        self.ends: dict[int, float] = {}
        self.first_round_started: float | None = None

    def round_started(self, round, num_rounds, stage, sampled):
        if self.first_round_started is None:
            self.first_round_started = time.time()
        self.starts.setdefault(round, time.perf_counter())

    def round_finished(self, record, state):
        self.ends[record.round] = time.perf_counter()


class PeakRSS:
    """Samples the RSS of this process and its children (the workers)."""

    def __init__(self, interval: float = 0.05):
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval: float) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def _floor_worker(args) -> float:
    params, nodes, seed = args
    arrays = model(params)
    acc = {k: np.zeros_like(v) for k, v in arrays.items()}
    from corolla import seeding

    for node in nodes:
        out = fit(arrays, seeding.rng(seed, "floor", 1, node))
        for k, v in out.items():
            acc[k] += v  # one read of every reply
    return 0.0


def measure_floor(params: int, sample: int, workers: int, reps: int = 3) -> float:
    ctx = mp.get_context("fork")
    chunks = [list(range(i, sample, workers)) for i in range(workers)]
    times = []
    with ctx.Pool(workers) as pool:
        pool.map(_floor_worker, [(params, c[:1], 0) for c in chunks])  # warm up
        for r in range(reps):
            t0 = time.perf_counter()
            pool.map(_floor_worker, [(params, c, r) for c in chunks])
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--params", type=float, default=1e4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--backend", default="process", choices=["process", "inline"])
    p.add_argument("--sample", type=int, default=None, help="nodes per round (default: all)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    p.add_argument("--no-floor", action="store_true", help="skip the floor measurement")
    a = p.parse_args()
    params = int(a.params)
    sample = a.sample or a.nodes
    workers = a.workers or os.cpu_count() or 1

    def server(ctx):
        return Rounds(
            strategy=FedAvg(
                fraction_train=sample / a.nodes, min_train_nodes=sample, fraction_evaluate=0, min_evaluate_nodes=0
            ),
            initial_arrays=model(params),
        )

    timer = Timer()
    with PeakRSS() as rss:
        history = run_simulation(
            ServerApp(server),
            app,
            num_nodes=a.nodes,
            num_rounds=a.rounds,
            backend=a.backend,
            seed=0,
            observer=timer,
            workers=workers,
        )
    rounds = [timer.ends[r] - timer.starts[r] for r in sorted(timer.ends)]
    steady = rounds[1:] if len(rounds) > 1 else rounds  # the first round warms caches and workers
    floor = None if a.no_floor else measure_floor(params, sample, workers)
    med = statistics.median(steady)
    print(
        json.dumps(
            {
                "framework": "corolla",
                "backend": a.backend,
                "nodes": a.nodes,
                "sample": sample,
                "params": params,
                "rounds": a.rounds,
                "workers": workers,
                "round_s_median": round(med, 4),
                "round_s_min": round(min(steady), 4),
                "round_s_max": round(max(steady), 4),
                "round_s_first": round(rounds[0], 4),
                "floor_s": None if floor is None else round(floor, 4),
                "ratio_to_floor": None if floor is None else round(med / floor, 3),
                "startup_s": round(timer.first_round_started - T_PROCESS_START, 3),
                "peak_rss_mib": round(rss.peak / 2**20, 1),
                "arrays_sha256": history.arrays_sha256,
            }
        )
    )


if __name__ == "__main__":
    main()
