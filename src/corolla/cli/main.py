"""`corolla` entry point: new, run, runs, show, plot, data; serve, node, nodes, certs, keys."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .deploy import COMMANDS as DEPLOY_COMMANDS
from .deploy import EXAMPLES as DEPLOY_EXAMPLES
from .deploy import add_deploy_parsers, add_tls_client_options

EXAMPLES = {
    "new": "example:\n  corolla new my-app --template sklearn\n  corolla run my-app",
    "run": (
        "examples:\n"
        "  corolla run examples/sklearn-digits                       # settings from pyproject.toml\n"
        "  corolla run . --nodes 100 --rounds 5 -c local-epochs=2 --json out.json\n"
        "  corolla run . --backend inline                           # sequential, breakpoints work\n"
        "  corolla run . --resume 20261128-001502-a3f9              # continue a killed run\n"
        "  corolla run . --server 127.0.0.1:9091 --root-cert certs/ca.pem --key driver.key --min-nodes 3\n"
        "                                                           # on a coordinator's nodes"
    ),
    "runs": (
        "examples:\n  corolla runs\n  corolla runs --store my-app/.corolla --json\n"
        "  corolla runs --server 127.0.0.1:9091 --root-cert certs/ca.pem --key driver.key   # a coordinator's runs"
    ),
    "show": "examples:\n  corolla show 20261128-001502-a3f9\n  corolla show 2026 --json   # a unique prefix is enough",
    "plot": "example:\n  corolla plot 20261128-001502-a3f9 -o curves.png",
    "data": (
        "example:\n  corolla data inspect --data digits --partitioner dirichlet alpha=0.5 --nodes 20 -o heatmap.png"
    ),
}


EXAMPLES.update(DEPLOY_EXAMPLES)


def _store_dir(args: argparse.Namespace) -> Path:
    if args.store:
        return Path(args.store)
    return Path(getattr(args, "path", None) or ".") / ".corolla"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="corolla",
        description="Federated learning: simulate a federation on this machine, inspect its runs.",
        epilog="example:\n  corolla new my-app --template sklearn && corolla run my-app\n\n"
        "`corolla COMMAND --help` shows each command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="store_true", help="print the version and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug details to stderr")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help,
            description=help,
            epilog=EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    new = cmd("new", "create a project from a bundled template (works offline)")
    new.add_argument("name", help="project folder to create (also the project name)")
    new.add_argument("--template", default="sklearn", help="numpy, sklearn or pytorch (default: sklearn)")

    run = cmd("run", "run a project as a federated simulation")
    run.add_argument("path", nargs="?", default=".", help="project folder (default: .)")
    run.add_argument("--nodes", type=int, help="number of virtual nodes (default: [tool.corolla.simulation] nodes)")
    run.add_argument("--rounds", type=int, help="number of rounds (default: config num-rounds)")
    run.add_argument(
        "--backend", choices=["process", "inline"], help="process (parallel, default) or inline (sequential)"
    )
    run.add_argument("--seed", type=int, help="run seed (default: [tool.corolla] seed)")
    run.add_argument(
        "-c",
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override run config (repeatable; also 'a=1,b=2')",
    )
    run.add_argument("--resume", metavar="RUN_ID", help="continue a stored run from its last checkpoint")
    run.add_argument(
        "--json", metavar="FILE", help="write a JSON summary (run_id, rounds, final_metrics, arrays_sha256)"
    )
    run.add_argument("--store", metavar="DIR", help="store folder (default: PATH/.corolla)")
    run.add_argument("--quiet", action="store_true", help="no live display or summary (for scripts)")
    dep = run.add_argument_group("deployment (run on the nodes of a coordinator instead of simulating)")
    dep.add_argument("--server", metavar="HOST:PORT", help="the coordinator to drive")
    dep.add_argument("--min-nodes", type=int, help="wait for this many nodes (default: [tool.corolla.deployment])")
    dep.add_argument("--wait-nodes", type=float, metavar="S", help="how long to wait for them (default 60 s)")
    add_tls_client_options(dep)

    runs = cmd("runs", "list the runs in a store")
    runs.add_argument("--store", metavar="DIR", help="store folder (default: ./.corolla)")
    runs.add_argument("--json", action="store_true", help="print JSON instead of a table")
    runs.add_argument("--server", metavar="HOST:PORT", help="list a coordinator's runs instead of a store's")
    add_tls_client_options(runs)

    show = cmd("show", "per-round metrics of one run")
    show.add_argument("run_id", help="run id (or a unique prefix)")
    show.add_argument("--store", metavar="DIR", help="store folder (default: ./.corolla)")
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")

    plot = cmd("plot", "plot a run's metrics per round to a PNG (needs the 'plot' extra)")
    plot.add_argument("run_id", help="run id (or a unique prefix)")
    plot.add_argument("-o", "--output", required=True, metavar="FILE.png", help="image to write")
    plot.add_argument("--store", metavar="DIR", help="store folder (default: ./.corolla)")

    from .data import add_data_parser

    add_data_parser(cmd("data", "look at how a data set is split across nodes (corolla data inspect)"))
    add_deploy_parsers(cmd)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from .. import __version__

        print(f"corolla {__version__}")
        return 0
    if not args.command:
        parser.print_help()
        return 2
    level = logging.DEBUG if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for h in logging.getLogger().handlers:  # the per-run log file gets INFO; the terminal only `level`
        h.setLevel(level)
    from ..deploy.driver import DriverError
    from ..project import ProjectError
    from ..store import StoreError
    from ..strategies.base import StrategyError
    from ..transport.credentials import CredentialError
    from ..workflows.rounds import RoundFailed

    try:
        from .data import run_data

        commands = {"new": cmd_new, "run": cmd_run, "runs": cmd_runs, "show": cmd_show, "plot": cmd_plot}
        return {**commands, "data": run_data, **DEPLOY_COMMANDS}[args.command](args)
    except (ProjectError, StoreError, StrategyError, CredentialError, ValueError, TypeError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except DriverError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except RoundFailed as e:
        print(f"error: run failed: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `corolla show ID --json | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted; continue with `corolla run --resume RUN_ID` (see `corolla runs`)", file=sys.stderr)
        return 130


def cmd_new(args: argparse.Namespace) -> int:
    from ..templates import render

    dest = render(args.template, Path(args.name), Path(args.name).name)
    print(f"created {dest} from the {args.template} template; run it with:\n  corolla run {args.name}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from ..project import parse_config_overrides
    from ..simulation.runner import run_project
    from ..workflows.context import NullObserver
    from .progress import LiveProgress

    overrides = parse_config_overrides(args.config)
    observer = NullObserver() if args.quiet else LiveProgress()
    kwargs: dict = dict(
        num_rounds=args.rounds,
        seed=args.seed,
        config=overrides,
        store=args.store,
        resume=args.resume,
        observer=observer,
    )
    if args.server:
        from ..deploy.run import run_project_deployed
        from .deploy import channel_credentials, load_key

        if args.nodes is not None or args.backend is not None:
            raise ValueError("--nodes and --backend are simulation options; with --server the nodes are the "
                             "coordinator's (use --min-nodes)")
        kwargs.update(
            credentials=channel_credentials(args),
            key=load_key(args),
            min_nodes=args.min_nodes,
            wait_nodes_s=args.wait_nodes,
        )
        run = lambda: run_project_deployed(args.path, args.server, **kwargs)  # noqa: E731
    else:
        if args.min_nodes is not None or args.wait_nodes is not None:
            raise ValueError("--min-nodes and --wait-nodes need --server (a coordinator)")
        run = lambda: run_project(args.path, num_nodes=args.nodes, backend=args.backend, **kwargs)  # noqa: E731
    if isinstance(observer, LiveProgress):
        with observer:
            history = run()
    else:
        history = run()
    summary = history.to_dict()
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    if not args.quiet:
        final = summary["final_metrics"]
        shown = {
            g: {k: round(v, 4) for k, v in m.items() if k not in ("num-updates", "weight-sum", "server-lr")}
            for g, m in final.items()
        }
        done = sum(1 for r in history.rounds if r.round > 0)
        print(f"run {history.run_id} completed {done} rounds")
        for g, m in shown.items():
            if m:
                print(f"  final {g}: " + ", ".join(f"{k}={v}" for k, v in m.items()))
        print(f"  arrays sha256: {summary['arrays_sha256']}")
    return 0


def _open_store(args: argparse.Namespace):
    from ..store import Store, StoreError

    d = _store_dir(args)
    if not (d / "corolla.db").exists():
        # `corolla run PATH` stores in PATH/.corolla: name the stores of the folders below
        found = [] if args.store else sorted(str(db.parent) for db in d.parent.glob("*/.corolla/corolla.db"))[:5]
        hint = f"; stores found below: {', '.join(found)} (e.g. --store {found[0]})" if found else ""
        raise StoreError(f"no store at {d}; run a project first or pass --store DIR{hint}")
    return Store(d)


def _console(min_width: int) -> Console:
    """Wide enough for the table when piped (rich assumes 80 columns off a terminal)."""
    c = Console()
    return c if c.is_terminal else Console(width=max(c.width, min_width))


def cmd_runs(args: argparse.Namespace) -> int:
    if args.server:
        return _server_runs(args)
    with _open_store(args) as st:
        runs = st.list_runs()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "run_id": r.run_id,
                        "status": r.status,
                        "rounds_completed": r.rounds_completed,
                        "num_rounds": r.num_rounds,
                        "num_nodes": r.num_nodes,
                        "backend": r.backend,
                        "seed": r.seed,
                        "project": r.project,
                        "created": r.created,
                        "error": r.error,
                    }
                    for r in runs
                ],
                indent=2,
            )
        )
        return 0
    t = Table(title=f"runs in {_store_dir(args)}")
    for col in ("run id", "status", "rounds", "nodes", "backend", "seed", "project"):
        t.add_column(col)
    for r in runs:
        t.add_row(
            r.run_id,
            r.status,
            f"{r.rounds_completed}/{r.num_rounds}",
            str(r.num_nodes),
            r.backend,
            str(r.seed),
            Path(r.project).name if r.project else "",
        )
    _console(120).print(t)
    return 0


def _server_runs(args: argparse.Namespace) -> int:
    from .deploy import server_runs

    runs = server_runs(args)
    if args.json:
        print(json.dumps(runs, indent=2))
        return 0
    t = Table(title=f"runs on {args.server}")
    for col in ("run id", "status", "rounds", "seed", "project"):
        t.add_column(col)
    for r in runs:
        t.add_row(
            r["run_id"],
            r["status"],
            f"{r['rounds_completed']}/{r['num_rounds']}",
            str(r["seed"]),
            Path(r["project"]).name if r["project"] else "",
        )
    _console(100).print(t)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _open_store(args) as st:
        info = st.get_run(args.run_id)
        rounds = st.rounds(info.run_id)
    if args.json:
        print(
            json.dumps({"run_id": info.run_id, "status": info.status, "error": info.error, "rounds": rounds}, indent=2)
        )
        return 0
    cols: list[tuple[str, str]] = []
    for r in rounds:
        for g in ("train", "evaluate", "server"):
            for k in r["metrics"][g]:
                if (g, k) not in cols:
                    cols.append((g, k))
    t = Table(title=f"run {info.run_id} ({info.status}{': ' + info.error if info.error else ''})")
    t.add_column("round")
    for g, k in cols:
        t.add_column(f"{g}.{k}", no_wrap=True)
    t.add_column("replied")
    t.add_column("failures")
    t.add_column("seconds")
    for r in rounds:
        m = r["metrics"]
        t.add_row(
            str(r["round"]),
            *[f"{m[g][k]:.4g}" if k in m[g] else "" for g, k in cols],
            f"{len(r['replied'])}/{len(r['sampled'])}",
            str(len(r["failures"])),
            f"{r['seconds']:.2f}",
        )
    _console(sum(len(f"{g}.{k}") + 3 for g, k in cols) + 40).print(t)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("plotting needs matplotlib: pip install 'corolla[plot]'") from None
    with _open_store(args) as st:
        info = st.get_run(args.run_id)
        rounds = st.rounds(info.run_id)
    series: dict[str, list[tuple[int, float]]] = {}
    for r in rounds:
        for g in ("train", "evaluate", "server"):
            for k, v in r["metrics"][g].items():
                if k in ("num-updates", "weight-sum", "server-lr"):
                    continue
                series.setdefault(f"{g}.{k}", []).append((r["round"], v))
    if not series:
        raise ValueError(f"run {info.run_id} has no metrics to plot yet")
    names = sorted(series)
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 2.2 * len(names)), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        xs, ys = zip(*series[name])
        ax.plot(xs, ys, marker="o", ms=3)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("round")
    fig.suptitle(f"run {info.run_id}")
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
