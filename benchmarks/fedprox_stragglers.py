"""FedProx vs FedAvg with stragglers on Synthetic(1, 1): the setup of Li et al., MLSys 2020 (Figure 1).

    python benchmarks/fedprox_stragglers.py                       # 100 rounds, 9 runs, ~3.5 minutes
    python benchmarks/fedprox_stragglers.py --seeds 0 1 2 --jobs 2 # what benchmarks/ALGORITHMS.md reports

Setup, as in the paper and its code (litian96/FedProx):
- data: FedProx Synthetic(alpha=1, beta=1), 30 devices (`corolla.data.synthetic.synthetic_fedprox`).
- model: multinomial logistic regression from zero weights. Local solver: mini-batch SGD, lr 0.01,
  batch 10, E = 20 local epochs (`corolla.client.helpers.numpy.mlr_train`).
- each round 10 devices are sampled uniformly, and the mean of their models is weighted by
  n_k (`FedAvg`). A fraction p in {0, 0.5, 0.9} of the sampled devices is chosen as
  stragglers, exactly round(10 p) of them, seeded by (run seed, round). A straggler does a
  random number of epochs in [1, E), drawn from its `ctx.rng`.
- FedAvg drops the stragglers: they reply with num-examples 0, so their weight is 0.
  FedProx keeps their partial work. "FedProx (mu=0)" isolates that effect, and
  "FedProx (mu=1)" adds the proximal term mu/2 ||w - w_global||^2 with mu = 1. FedProx is
  FedAvg + ``node_config={"proximal-mu": mu}``.
- metrics per round, from the server: the global model's training loss over all devices'
  training data (weighted by n_k, as in the paper), and its accuracy over all devices' test data.

Writes OUT.json (per-round curves), OUT.png and OUT.svg (loss and accuracy per round), and
prints a markdown table with the final loss and accuracy. "loss std (last 20)" is the standard
deviation of the training loss over the last 20 rounds, a measure of stability.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import time
from pathlib import Path

import numpy as np

from corolla import ClientApp, FedAvg, Rounds, ServerApp, run_simulation, seeding
from corolla.client.helpers.numpy import mlr_evaluate, mlr_init, mlr_train
from corolla.data.synthetic import FEDPROX_DIM, FEDPROX_NUM_CLASSES, synthetic_fedprox
from corolla.strategies import RoundCtx

NUM_DEVICES = 30
PER_ROUND = 10
ALGORITHMS = {  # name -> (proximal mu, drop stragglers)
    "FedAvg": (0.0, True),
    "FedProx (mu=0)": (0.0, False),
    "FedProx (mu=1)": (1.0, False),
}


@functools.lru_cache(maxsize=None)
def device_data(k: int, alpha: float, beta: float, seed: int):
    return synthetic_fedprox(k, alpha, beta, num_devices=NUM_DEVICES, seed=seed)


app = ClientApp()


@app.train
def train(msg, ctx):
    cfg, rc = msg.content.config, ctx.run_config
    X, y, _, _ = device_data(ctx.node_id, float(rc["alpha"]), float(rc["beta"]), int(rc["data-seed"]))
    epochs = int(cfg["local-epochs"])
    straggler = ctx.node_id in cfg["stragglers"]
    if straggler:
        if cfg["drop-stragglers"]:  # FedAvg: the straggler's work is lost
            return msg.reply(arrays=msg.content.arrays, metrics={"num-examples": 0, "straggler": 1})
        epochs = int(ctx.rng("straggler-epochs").integers(1, epochs))  # partial work: [1, E)
    w, steps, loss = mlr_train(
        msg.content.arrays,
        X,
        y,
        epochs=epochs,
        lr=float(cfg["learning-rate"]),
        batch_size=int(cfg["batch-size"]),
        rng=ctx.rng("batches"),
        mu=float(cfg["proximal-mu"]),
    )
    return msg.reply(
        arrays=w,
        metrics={"num-examples": len(y), "train-loss": loss, "local-steps": steps, "straggler": int(straggler)},
    )


def stragglers_fn(strategy, straggler_frac: float, seed: int):
    """round -> the sampled devices that straggle: exactly round(p * cohort), seeded by (seed, round)."""

    def fn(rnd: int) -> dict:
        nodes, _ = strategy.select.select({}, range(NUM_DEVICES), RoundCtx(round=rnd, seed=seed, num_nodes=NUM_DEVICES))
        k = int(round(straggler_frac * len(nodes)))
        chosen = seeding.rng(seed, "stragglers", rnd).choice(nodes, size=k, replace=False) if k else []
        return {"stragglers": sorted(int(n) for n in chosen)}

    return fn


def make_server(mu: float, drop: bool, straggler_frac: float, epochs: int, lr: float, batch: int) -> ServerApp:
    def server(ctx):
        rc = ctx.run_config
        parts = [
            device_data(k, float(rc["alpha"]), float(rc["beta"]), int(rc["data-seed"])) for k in range(NUM_DEVICES)
        ]
        X_tr = np.concatenate([p.x_train for p in parts])
        y_tr = np.concatenate([p.y_train for p in parts])
        X_te = np.concatenate([p.x_test for p in parts])
        y_te = np.concatenate([p.y_test for p in parts])

        def evaluate(rnd, arrays):
            train_loss, _ = mlr_evaluate(arrays, X_tr, y_tr)
            test_loss, acc = mlr_evaluate(arrays, X_te, y_te)
            return {"train-loss": train_loss, "test-loss": test_loss, "accuracy": acc}

        strategy = FedAvg(  # + proximal-mu: FedProx
            fraction_train=0.0,
            min_train_nodes=PER_ROUND,
            fraction_evaluate=0,
            min_evaluate_nodes=0,
            node_config={
                "local-epochs": epochs,
                "learning-rate": lr,
                "batch-size": batch,
                "proximal-mu": mu,
                "drop-stragglers": drop,
            },
        )
        return Rounds(
            strategy=strategy,
            initial_arrays=mlr_init(FEDPROX_DIM, FEDPROX_NUM_CLASSES),
            evaluate_fn=evaluate,
            train_config=stragglers_fn(strategy, straggler_frac, ctx.seed),
        )

    return ServerApp(server)


def run_one(
    algo: str,
    straggler_frac: float,
    *,
    rounds: int,
    seed: int = 0,
    data_seed: int = 0,
    backend: str = "process",
    epochs: int = 20,
    lr: float = 0.01,
    batch: int = 10,
    alpha: float = 1.0,
    beta: float = 1.0,
) -> dict:
    mu, drop = ALGORITHMS[algo]
    t = time.perf_counter()
    h = run_simulation(
        make_server(mu, drop, straggler_frac, epochs, lr, batch),
        app,
        num_nodes=NUM_DEVICES,
        num_rounds=rounds,
        backend=backend,
        seed=seed,
        run_config={"alpha": alpha, "beta": beta, "data-seed": data_seed},
    )
    return {
        "algorithm": algo,
        "stragglers": straggler_frac,
        "seed": seed,
        "train_loss": [round(v, 5) for _, v in h.metric("server", "train-loss")],  # index 0 = initial model
        "accuracy": [round(v, 5) for _, v in h.metric("server", "accuracy")],
        "seconds": time.perf_counter() - t,
    }


def summarize(results: list[dict], last: int = 20) -> list[dict]:
    """Per (algorithm, stragglers): final loss and accuracy, stability; mean over seeds."""
    rows = []
    for frac in sorted({r["stragglers"] for r in results}):
        for algo in ALGORITHMS:
            rs = [r for r in results if r["algorithm"] == algo and r["stragglers"] == frac]
            if not rs:
                continue
            loss = np.array([r["train_loss"] for r in rs])
            acc = np.array([r["accuracy"] for r in rs])
            rows.append(
                {
                    "stragglers": frac,
                    "algorithm": algo,
                    "seeds": len(rs),
                    "final_loss": float(loss[:, -1].mean()),
                    "final_acc": float(acc[:, -1].mean()),
                    "acc_last": float(acc[:, -last:].mean()),
                    "loss_std_last": float(loss[:, -last:].std(axis=1).mean()),
                    "max_loss_after_10": float(loss[:, 10:].max(axis=1).mean()) if loss.shape[1] > 10 else float("nan"),
                }
            )
    return rows


def markdown(rows: list[dict], last: int = 20) -> str:
    out = [
        f"| stragglers | algorithm | final train loss | final test acc | mean test acc (last {last}) "
        f"| loss std (last {last}) | max train loss after round 10 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['stragglers']:.0%} | {r['algorithm']} | {r['final_loss']:.3f} | {r['final_acc']:.3f} "
            f"| {r['acc_last']:.3f} | {r['loss_std_last']:.3f} | {r['max_loss_after_10']:.3f} |"
        )
    return "\n".join(out)


def plot(results: list[dict], stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fracs = sorted({r["stragglers"] for r in results})
    fig, axes = plt.subplots(2, len(fracs), figsize=(4.2 * len(fracs), 6.5), sharex=True, squeeze=False)
    colors = {"FedAvg": "tab:red", "FedProx (mu=0)": "tab:orange", "FedProx (mu=1)": "tab:blue"}
    for j, frac in enumerate(fracs):
        for algo in ALGORITHMS:
            rs = [r for r in results if r["algorithm"] == algo and r["stragglers"] == frac]
            if not rs:
                continue
            loss = np.mean([r["train_loss"] for r in rs], axis=0)
            acc = np.mean([r["accuracy"] for r in rs], axis=0)
            axes[0, j].plot(loss, label=algo, color=colors[algo], lw=1.2)
            axes[1, j].plot(acc, label=algo, color=colors[algo], lw=1.2)
        axes[0, j].set_title(f"Synthetic(1,1), {frac:.0%} stragglers")
        axes[1, j].set_xlabel("round")
        axes[0, j].set_ylim(0, min(6.0, axes[0, j].get_ylim()[1]))
    axes[0, 0].set_ylabel("training loss")
    axes[1, 0].set_ylabel("test accuracy")
    axes[0, 0].legend(fontsize=8)
    seeds = len({r["seed"] for r in results})
    fig.suptitle(f"MLR, 30 devices, 10 per round, E = 20; mean of {seeds} seed(s). At 0 %, FedAvg = FedProx (mu=0).")
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(stem.with_suffix(f".{ext}"), dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--data-seed", type=int, default=None, help="default: each run seed also seeds the data")
    ap.add_argument("--stragglers", type=float, nargs="+", default=[0.0, 0.5, 0.9])
    ap.add_argument("--backend", default="inline", choices=["process", "inline"])
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (worker processes)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fedprox_stragglers")
    ap.add_argument("--replot", action="store_true", help="only redraw OUT.png/svg and the table from OUT.json")
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.replot:
        results = json.loads(args.out.with_suffix(".json").read_text())["runs"]
        plot(results, args.out)
        print(markdown(summarize(results)))
        return
    configs = [(seed, frac, algo) for seed in args.seeds for frac in args.stragglers for algo in ALGORITHMS]

    def submit(pool, seed, frac, algo):
        data_seed = seed if args.data_seed is None else args.data_seed
        kw = dict(rounds=args.rounds, seed=seed, data_seed=data_seed, backend=args.backend)
        return pool.submit(run_one, algo, frac, **kw)

    results = []
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
        for fut in [submit(pool, *c) for c in configs]:
            r = fut.result()
            print(
                f"seed {r['seed']} stragglers {r['stragglers']:.0%} {r['algorithm']:15s} "
                f"loss {r['train_loss'][-1]:.3f} acc {r['accuracy'][-1]:.3f} ({r['seconds']:.1f} s)",
                flush=True,
            )
            results.append(r)
    rows = summarize(results)
    meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.out.with_suffix(".json").write_text(json.dumps({"args": meta, "runs": results, "summary": rows}))
    plot(results, args.out)
    print(markdown(rows))


if __name__ == "__main__":
    main()
