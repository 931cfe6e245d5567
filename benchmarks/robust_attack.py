"""Robust aggregation under Byzantine attack: FedAvg vs FedMedian, FedTrimmedAvg, Krum, Bulyan, RFA.

Digits (corolla.data.digits, Dirichlet label skew), softmax regression trained by minibatch SGD
in numpy, N nodes of which a fraction are malicious. A malicious node trains honestly, then
replaces its update ``delta = trained - global`` by ``factor * delta`` (a ClientApp mod, so the
honest training code is untouched):

    sign-flip   factor = -4     (the update points the other way, amplified)
    scale+10    factor = +10    (a boosted update)
    scale-10    factor = -10    (boosted and flipped)
    none        no attack (the price of robustness on honest, non-IID nodes)

Every strategy sees every node each round (fraction 1); the robust ones are told f = the number
of attackers. Final centralized accuracy on the held-out test set, averaged over seeds.

    .venv/bin/python benchmarks/robust_attack.py                     # full grid, writes robust_attack.md
    .venv/bin/python benchmarks/robust_attack.py --rounds 5 --seeds 1 --no-write

Prints one JSON line per run; the table goes to benchmarks/robust_attack.md (a "## Notes"
section written by hand below it is kept).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from corolla import Arrays, ClientApp, FedAvg, Rounds, ServerApp, run_simulation
from corolla.data.digits import NUM_CLASSES, NUM_FEATURES, load_digits_partition, load_digits_test
from corolla.message import TRAIN
from corolla.strategies.robust import RFA, Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum

HERE = Path(__file__).resolve().parent
ATTACKS = {"none": None, "sign-flip": -4.0, "scale+10": 10.0, "scale-10": -10.0}


# -- the task: softmax regression on digits ---------------------------------------------
def initial_arrays() -> Arrays:
    return Arrays({"W": np.zeros((NUM_FEATURES, NUM_CLASSES), np.float32), "b": np.zeros(NUM_CLASSES, np.float32)})


def predict(arrays: Arrays, X: np.ndarray) -> np.ndarray:
    z = X @ arrays["W"] + arrays["b"]
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def accuracy(arrays: Arrays, X: np.ndarray, y: np.ndarray) -> float:
    if not all(np.isfinite(v).all() for v in arrays.values()):
        return 0.0
    return float((predict(arrays, X).argmax(axis=1) == y).mean())


def sgd(arrays: Arrays, X: np.ndarray, y: np.ndarray, epochs: int, lr: float, batch: int, rng) -> tuple[Arrays, float]:
    W, b = arrays["W"].astype(np.float64), arrays["b"].astype(np.float64)
    onehot = np.eye(NUM_CLASSES)[y]
    for _ in range(epochs):
        perm = rng.permutation(len(y))
        for i in range(0, len(y), batch):
            idx = perm[i : i + batch]
            p = predict(Arrays({"W": W, "b": b}), X[idx])
            g = (p - onehot[idx]) / len(idx)
            W -= lr * (X[idx].T @ g)
            b -= lr * g.sum(axis=0)
    p = predict(Arrays({"W": W, "b": b}), X)
    loss = float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())
    return Arrays({"W": W.astype(np.float32), "b": b.astype(np.float32)}), loss


def attack_mod(attackers: set[int], factor: float | None):
    """Malicious nodes send ``global + factor * (trained - global)`` instead of ``trained``."""

    def mod(msg, ctx, call_next):
        reply = call_next(msg, ctx)
        if factor is None or msg.kind != TRAIN or reply.error is not None or ctx.partition_id not in attackers:
            return reply
        base, new = msg.content.arrays, reply.content.arrays
        bad = Arrays((k, (base[k] + factor * (new[k] - base[k])).astype(base[k].dtype)) for k in new)
        return reply.with_content(arrays=bad)

    return mod


def client_app(attackers: set[int], factor: float | None) -> ClientApp:
    app = ClientApp(mods=[attack_mod(attackers, factor)])

    @app.train
    def train(msg, ctx):
        cfg = ctx.run_config
        X, y, _, _ = load_digits_partition(
            ctx.partition_id, ctx.num_partitions, alpha=float(cfg["alpha"]), seed=ctx.seed
        )
        arrays, loss = sgd(
            msg.content.arrays, X, y, int(cfg["local-epochs"]), float(cfg["lr"]), 16, ctx.rng("train")
        )
        return msg.reply(arrays=arrays, metrics={"train-loss": loss, "num-examples": len(y)})

    return app


def strategies(num_attackers: int) -> dict:
    f = num_attackers
    off = {"fraction_evaluate": 0.0, "min_evaluate_nodes": 0}
    return {
        "FedAvg": lambda: FedAvg(**off),
        "FedMedian": lambda: FedMedian(**off),
        "FedTrimmedAvg(0.2)": lambda: FedTrimmedAvg(0.2, **off),
        f"Krum(f={f})": lambda: Krum(f, **off),
        f"MultiKrum(f={f},m=10)": lambda: MultiKrum(f, 10, **off),
        f"Bulyan(f={f})": lambda: Bulyan(f, **off),
        "RFA": lambda: RFA(**off),
    }


def run_one(make_strategy, attack: str, num_nodes: int, attackers: set[int], rounds: int, seed: int, cfg: dict) -> dict:
    X_test, y_test = load_digits_test(seed=seed)

    def server(ctx):
        return Rounds(
            strategy=make_strategy(),
            initial_arrays=initial_arrays,
            evaluate_fn=lambda rnd, arrays: {"accuracy": accuracy(arrays, X_test, y_test)},
        )

    t0 = time.perf_counter()
    h = run_simulation(
        ServerApp(server), client_app(attackers, ATTACKS[attack]), num_nodes=num_nodes, num_rounds=rounds,
        backend="inline", seed=seed, run_config=cfg,
    )
    acc = [a for _, a in h.metric("server", "accuracy")]
    return {"final_accuracy": acc[-1], "best_accuracy": max(acc), "curve": acc, "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--malicious", type=float, default=0.2, help="fraction of malicious nodes")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--alpha", type=float, default=1.0, help="Dirichlet label skew (smaller: more skewed)")
    ap.add_argument("--local-epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--only", default="", help="comma-separated strategy names (prefix match)")
    ap.add_argument("--no-write", action="store_true", help="do not write robust_attack.md")
    a = ap.parse_args(argv)

    num_attackers = int(round(a.malicious * a.nodes))
    attackers = set(range(num_attackers))  # partitions 0..k-1 (the Dirichlet split is seeded, so any set is as good)
    cfg = {"alpha": a.alpha, "local-epochs": a.local_epochs, "lr": a.lr}
    strats = strategies(num_attackers)
    if a.only:
        strats = {k: v for k, v in strats.items() if any(k.startswith(p) for p in a.only.split(","))}
    attacks = a.attacks.split(",")
    results: dict[tuple[str, str], list[dict]] = {}
    for attack in attacks:
        for name, make in strats.items():
            for seed in range(a.seeds):
                r = run_one(make, attack, a.nodes, attackers, a.rounds, seed, cfg)
                results.setdefault((name, attack), []).append(r)
                print(json.dumps({"strategy": name, "attack": attack, "seed": seed, "nodes": a.nodes,
                                  "malicious": num_attackers, "rounds": a.rounds,
                                  "final_accuracy": round(r["final_accuracy"], 4),
                                  "best_accuracy": round(r["best_accuracy"], 4),
                                  "seconds": round(r["seconds"], 2)}), flush=True)
    if not a.no_write:
        write_markdown(results, strats, attacks, a, num_attackers)


def write_markdown(results, strats, attacks, a, num_attackers) -> None:
    def cell(rs):
        acc = np.array([r["final_accuracy"] for r in rs])
        return f"{acc.mean():.3f} ± {acc.std():.3f}" if len(acc) > 1 else f"{acc.mean():.3f}"

    lines = [
        "# Robust aggregation under attack (digits)",
        "",
        f"Measured with `benchmarks/robust_attack.py` (defaults): {a.nodes} nodes, {num_attackers} malicious "
        f"({a.malicious:.0%}), {a.rounds} rounds, every node every round, Dirichlet alpha={a.alpha}, softmax "
        f"regression, {a.local_epochs} local epochs of minibatch SGD (lr {a.lr}), inline backend; robust "
        f"strategies are told f={num_attackers}. Final centralized test accuracy (mean ± std over "
        f"{a.seeds} seeds). A malicious node sends `global + factor * (trained - global)`: sign-flip "
        "factor -4, scale+10 factor +10, scale-10 factor -10; `none` is the honest baseline.",
        "",
        f"Python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}.",
        "",
        "| strategy | " + " | ".join(attacks) + " |",
        "|---|" + "---:|" * len(attacks),
    ]
    for name in strats:
        lines.append(f"| {name} | " + " | ".join(cell(results[(name, at)]) for at in attacks) + " |")
    lines.append("")
    path = HERE / "robust_attack.md"
    notes = ""
    if path.exists():  # hand-written notes after "## Notes" survive a re-run
        old = path.read_text()
        notes = old[old.index("## Notes") :] if "## Notes" in old else ""
    path.write_text("\n".join(lines) + ("\n" + notes if notes else "\n"))
    print(f"wrote {HERE / 'robust_attack.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
