"""FedAvg vs FedProx vs SCAFFOLD on digits under strong label skew (Dirichlet alpha = 0.1, 20 nodes).

    python benchmarks/scaffold_noniid.py                        # 3 seeds, 100 rounds, a few minutes
    python benchmarks/scaffold_noniid.py --seeds 0 --rounds 50 --fraction 0.5

Setup:
- data: the UCI digits (`corolla.data.digits`). The 1438 training images are split over
  20 nodes by a per-class Dirichlet(0.1) (`seed` also seeds the split). Each node keeps 20 %
  of its share as local test data and trains on the rest. Accuracy is measured on the global
  held-out test set (359 images) after every round.
- model: the MLP of examples/pytorch-digits (64-64-10), the same initial weights for every
  algorithm with the same seed.
- local training, the same for all: plain SGD (no momentum, no weight decay), lr 0.05,
  batch 16, E local epochs (default 5). SCAFFOLD's option II assumes plain SGD with a known
  lr, and giving every algorithm the same solver keeps the comparison fair.
- FedAvg: mean weighted by num-examples. FedProx: FedAvg plus mu/2 ||w - w_global||^2
  (`proximal_term`), with every mu in --mus reported. SCAFFOLD: `strategies.stateful.SCAFFOLD`
  (unweighted means, eta_g = 1, c += |S|/N mean dc) with the node helper `ScaffoldCorrection`
  (option II: c_i+ = c_i - c + (x - y_i)/(K lr)).

Prints a markdown table: rounds to reach each target test accuracy (median over seeds, with
the per-seed values), final and best accuracy. Writes OUT.json with the per-round curves and
OUT.png/OUT.svg.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from corolla import Arrays, ClientApp, FedAvg, Rounds, ServerApp, run_simulation
from corolla.client.helpers.torch import ScaffoldCorrection, proximal_term, snapshot
from corolla.data.digits import NUM_CLASSES, NUM_FEATURES, load_digits_partition, load_digits_test
from corolla.seeding import derive_int
from corolla.strategies.stateful import SCAFFOLD, model_arrays

torch.set_num_threads(1)
NUM_NODES = 20


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(NUM_FEATURES, 64)
        self.fc2 = nn.Linear(64, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


def node_data(ctx):
    rc = ctx.run_config
    parts = load_digits_partition(ctx.partition_id, NUM_NODES, alpha=float(rc["dirichlet-alpha"]), seed=ctx.seed)
    return [torch.from_numpy(a) for a in parts]


app = ClientApp()


@app.train
def train(msg, ctx):
    torch.manual_seed(ctx.seed_for("train"))
    X, y, _, _ = node_data(ctx)
    cfg = msg.content.config
    lr, mu = float(cfg["learning-rate"]), float(cfg.get("proximal-mu", 0.0))
    net = Net()
    scaffold = ScaffoldCorrection(net, msg.content.arrays, ctx, lr=lr) if cfg["algorithm"] == "scaffold" else None
    if scaffold is None:
        net.load_state_dict(msg.content.arrays.to_torch())
    ref = snapshot(net)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    total = 0.0
    for _ in range(int(cfg["local-epochs"])):
        total = 0.0
        for idx in torch.randperm(len(y)).split(int(cfg["batch-size"])):
            opt.zero_grad()
            loss = F.cross_entropy(net(X[idx]), y[idx])
            (loss + proximal_term(net, ref, mu)).backward()
            if scaffold is not None:
                scaffold.correct()  # grad += c - c_i
            opt.step()
            total += loss.item() * len(idx)
    arrays = scaffold.finish() if scaffold is not None else Arrays.from_torch(net.state_dict())
    return msg.reply(arrays=arrays, metrics={"num-examples": len(y), "train-loss": total / max(len(y), 1)})


def make_server(algo: str, mu: float, fraction: float, epochs: int, lr: float, batch: int) -> ServerApp:
    def server(ctx):
        X_test, y_test = (torch.from_numpy(a) for a in load_digits_test(seed=ctx.seed))
        net = Net()

        @torch.no_grad()
        def evaluate(rnd, arrays):
            net.load_state_dict(model_arrays(arrays).to_torch())
            logits = net(X_test)
            acc = (logits.argmax(1) == y_test).float().mean().item()
            return F.cross_entropy(logits, y_test).item(), {"accuracy": acc}

        torch.manual_seed(derive_int(ctx.seed, "init"))
        init = Net()
        config = {"algorithm": algo, "local-epochs": epochs, "learning-rate": lr, "batch-size": batch}
        common = dict(fraction_train=fraction, fraction_evaluate=0, min_evaluate_nodes=0)
        if algo == "scaffold":
            strategy = SCAFFOLD(eta_g=1.0, node_config=config, **common)
            arrays = ScaffoldCorrection.initial_arrays(init)
        else:
            strategy = FedAvg(node_config={**config, "proximal-mu": mu}, **common)  # FedProx when mu > 0
            arrays = Arrays.from_torch(init.state_dict()).copy()
        return Rounds(strategy=strategy, initial_arrays=arrays, evaluate_fn=evaluate)

    return ServerApp(server)


def label(algo: str, mu: float) -> str:
    return {"fedavg": "FedAvg", "scaffold": "SCAFFOLD"}.get(algo, f"FedProx (mu={mu:g})")


def run_one(
    algo: str,
    *,
    mu: float = 0.0,
    rounds: int,
    seed: int,
    fraction: float = 1.0,
    epochs: int = 5,
    lr: float = 0.05,
    batch: int = 16,
    alpha: float = 0.1,
    backend: str = "inline",
) -> dict:
    t = time.perf_counter()
    h = run_simulation(
        make_server(algo, mu, fraction, epochs, lr, batch),
        app,
        num_nodes=NUM_NODES,
        num_rounds=rounds,
        backend=backend,
        seed=seed,
        run_config={"dirichlet-alpha": alpha},
    )
    return {
        "algorithm": label(algo, mu),
        "seed": seed,
        "accuracy": [round(v, 5) for _, v in h.metric("server", "accuracy")],  # index 0 = initial model
        "loss": [round(v, 5) for _, v in h.metric("server", "loss")],
        "seconds": time.perf_counter() - t,
    }


def rounds_to(acc: list[float], target: float) -> int | None:
    hits = [i for i, a in enumerate(acc) if a >= target]
    return hits[0] if hits else None


def markdown(results: list[dict], targets: list[float], rounds: int) -> str:
    head = " | ".join(f"rounds to {t:.2f}" for t in targets)
    out = [f"| algorithm | {head} | final acc | best acc |", "|---" * (3 + len(targets)) + "|"]
    for name in dict.fromkeys(r["algorithm"] for r in results):
        rs = [r for r in results if r["algorithm"] == name]
        cells = []
        for t in targets:
            per = [rounds_to(r["accuracy"], t) for r in rs]
            vals = [p if p is not None else np.inf for p in per]
            med = float(np.median(vals))
            shown = ", ".join(str(p) if p is not None else f">{rounds}" for p in per)
            cells.append(f"{med:.0f} ({shown})" if np.isfinite(med) else f">{rounds} ({shown})")
        final = np.mean([r["accuracy"][-1] for r in rs])
        best = np.mean([max(r["accuracy"]) for r in rs])
        out.append(f"| {name} | {' | '.join(cells)} | {final:.3f} | {best:.3f} |")
    return "\n".join(out)


def plot(results: list[dict], stem: Path, fraction: float = 1.0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name in dict.fromkeys(r["algorithm"] for r in results):
        acc = np.mean([r["accuracy"] for r in results if r["algorithm"] == name], axis=0)
        ax.plot(acc, label=name, lw=1.2)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (mean over seeds)")
    seeds = len({r["seed"] for r in results})
    ax.set_title(f"digits, 20 nodes ({fraction:.0%} per round), Dirichlet(0.1), mean of {seeds} seed(s)", fontsize=10)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(stem.with_suffix(f".{ext}"), dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--fraction", type=float, default=1.0, help="fraction of the 20 nodes sampled per round")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--mus", type=float, nargs="+", default=[0.01, 0.1])
    ap.add_argument("--targets", type=float, nargs="+", default=[0.85, 0.9])
    ap.add_argument("--backend", default="inline", choices=["process", "inline"])
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (worker processes)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "scaffold_noniid")
    ap.add_argument("--replot", action="store_true", help="only redraw OUT.png/svg and the table from OUT.json")
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.replot:
        saved = json.loads(args.out.with_suffix(".json").read_text())
        plot(saved["runs"], args.out, saved["args"]["fraction"])
        print(markdown(saved["runs"], saved["args"]["targets"], saved["args"]["rounds"]))
        return
    runs = [("fedavg", 0.0)] + [("fedprox", mu) for mu in args.mus] + [("scaffold", 0.0)]
    kw = dict(rounds=args.rounds, fraction=args.fraction, epochs=args.epochs, lr=args.lr, backend=args.backend)
    results = []
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_one, algo, mu=mu, seed=seed, **kw) for seed in args.seeds for algo, mu in runs]
        for fut in futures:
            r = fut.result()
            print(
                f"seed {r['seed']} {r['algorithm']:20s} final acc {r['accuracy'][-1]:.3f} "
                f"rounds to {args.targets}: {[rounds_to(r['accuracy'], t) for t in args.targets]} "
                f"({r['seconds']:.1f} s)",
                flush=True,
            )
            results.append(r)
    table = markdown(results, args.targets, args.rounds)
    meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.out.with_suffix(".json").write_text(json.dumps({"args": meta, "runs": results, "table": table}))
    plot(results, args.out, args.fraction)
    print(table)


if __name__ == "__main__":
    main()
