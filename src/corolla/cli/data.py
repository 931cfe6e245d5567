"""`corolla data inspect`: how a partitioner spreads a data set's labels over the nodes.

Registered by `corolla.cli.main` as the ``data`` command; heavy imports happen only when a
subcommand runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

INSPECT_HELP = "per-node label counts of a partitioning: a table (or JSON) and a bar chart or heatmap PNG"

INSPECT_EXAMPLES = (
    "examples:\n"
    "  # the demo's split (examples/sklearn-digits: 20 nodes, Dirichlet alpha=0.5, seed 0)\n"
    "  corolla data inspect --data digits --partitioner dirichlet alpha=0.5 --nodes 20 -o heatmap.png\n"
    "  corolla data inspect --data digits --partitioner iid --nodes 10 --kind bar -o iid.png\n"
    "  corolla data inspect --data train.csv --label species --partitioner dirichlet alpha=0.1 --nodes 5\n"
    "  corolla data inspect --data synthetic-fedprox alpha=0.5 beta=0.5 --nodes 30 --json\n"
    "  corolla data inspect --data fcube -o fcube.png                 # 4 parties, feature skew\n"
    "\n"
    "--data is a bundled data set (digits; synthetic-fedprox, synthetic-leaf and fcube, which\n"
    "are partitioned naturally, one generated share per node, and take their generator's options\n"
    "as KEY=VALUE), a local CSV/TSV/Parquet/JSON file or directory (--label names the label\n"
    "column), or a Hugging Face hub name (needs `pip install 'corolla[data]'` and a network).\n"
    "--partitioner NAME KEY=VALUE... builds the partitioner with num_partitions=--nodes and\n"
    "seed=--seed; digits is split as the demo splits it: the training part of its global\n"
    "train/test split (test fraction 0.2, --seed), then the partitioner."
)

#: data sets that come with corolla: no download, no file
BUNDLED = ("digits", "synthetic-fedprox", "synthetic-leaf", "fcube")
_NATURAL = {"synthetic-fedprox": 30, "synthetic-leaf": 1000, "fcube": 4}  # default number of nodes
DEFAULT_NODES = 10


def add_data_parser(data: argparse.ArgumentParser) -> None:
    """Add the ``data`` subcommands to the ``corolla data`` parser."""
    data.set_defaults(data_parser=data)
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    p = sub.add_parser(
        "inspect",
        help=INSPECT_HELP,
        description=INSPECT_HELP,
        epilog=INSPECT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar=("NAME_OR_PATH", "KEY=VALUE"),
        help="a bundled data set (" + ", ".join(BUNDLED) + ") with its options, a local file or "
        "directory, or a Hugging Face hub name",
    )
    p.add_argument(
        "--partitioner",
        nargs="+",
        metavar=("NAME", "KEY=VALUE"),
        help="partitioner name and options, e.g. 'dirichlet alpha=0.5' (default: iid; natural for the synthetic sets)",
    )
    p.add_argument(
        "--nodes",
        type=int,
        help=f"number of nodes (default: {DEFAULT_NODES}; for the synthetic sets their usual count)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the partitioner and data split (default: 0)")
    p.add_argument("--label", default="label", help="label column of a file or hub data set (default: label)")
    p.add_argument("--split", default="train", help="split of a file or hub data set to partition (default: train)")
    p.add_argument("-o", "--output", metavar="FILE.png", help="write a plot of the counts")
    p.add_argument(
        "--kind", choices=["heatmap", "bar"], default="heatmap", help="plot: heatmap (default) or stacked bars"
    )
    p.add_argument("--json", action="store_true", help="print per-node counts as JSON instead of the table")
    p.add_argument("--top", type=int, default=3, help="classes shown per node in the table (default: 3)")


def run_data(args: argparse.Namespace) -> int:
    if getattr(args, "data_command", None) != "inspect":
        args.data_parser.print_help()
        return 2
    try:
        return cmd_inspect(args)
    except KeyError as e:  # a missing column: the message is the useful part
        raise ValueError(e.args[0] if e.args else str(e)) from None
    except ImportError as e:
        raise ValueError(str(e)) from None
    except BrokenPipeError:  # `corolla data inspect ... | head`: handled by main
        raise
    except OSError as e:  # files that cannot be read, hub errors not already translated
        raise ValueError(f"{type(e).__name__}: {e}") from None


# -- building the pieces -------------------------------------------------------------------


def _kv(items: list[str], what: str) -> dict[str, Any]:
    from ..project import parse_config_overrides

    for item in items:
        if "=" not in item:
            raise ValueError(f"{what} options look like KEY=VALUE, got {item!r}")
    return {k.replace("-", "_"): v for k, v in parse_config_overrides(items).items()}


def partitioner_registry() -> dict[str, type]:
    """``corolla.data.partitioners.PARTITIONERS`` when there is one, else the basic two."""
    from ..data import partitioners

    registry = getattr(partitioners, "PARTITIONERS", None)
    if registry:
        return dict(registry)
    return {"iid": partitioners.IID, "dirichlet": partitioners.Dirichlet}


def build_partitioner(name: str, options: dict[str, Any], nodes: int | None, seed: int) -> Any:
    """``PARTITIONERS[name](num_partitions=nodes, seed=seed, **options)``, with plain errors."""
    registry = partitioner_registry()
    if name not in registry:
        raise ValueError(f"unknown partitioner {name!r}; choose one of: {', '.join(sorted(registry))}")
    cls = registry[name]
    params = inspect.signature(cls).parameters
    open_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = dict(options)
    npar = params.get("num_partitions")
    if npar is not None and "num_partitions" not in kwargs:
        if nodes is not None:
            kwargs["num_partitions"] = nodes
        elif npar.default is inspect.Parameter.empty:
            kwargs["num_partitions"] = DEFAULT_NODES
    elif npar is None and nodes is not None and not open_kwargs:
        raise ValueError(f"partitioner {name!r} decides the number of nodes itself; drop --nodes")
    if "seed" in params and "seed" not in kwargs:
        kwargs["seed"] = seed
    names = [
        p for p in params if params[p].kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    ]
    unknown = sorted(set(kwargs) - set(names))
    if unknown and not open_kwargs:
        raise ValueError(f"partitioner {name!r} has no option {', '.join(unknown)}; its options: {', '.join(names)}")
    missing = [p for p in names if params[p].default is inspect.Parameter.empty and p not in kwargs]
    if missing:
        raise ValueError(
            f"partitioner {name!r} needs {' '.join(f'{m}=VALUE' for m in missing)} "
            f"(e.g. --partitioner {name} {missing[0]}=...)"
        )
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"partitioner {name!r}: {e}") from None


def _describe(partitioner: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(partitioner):
        return {f.name: getattr(partitioner, f.name) for f in dataclasses.fields(partitioner)}
    return {}


def _jsonable(v: Any) -> Any:
    import numpy as np

    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return repr(v)


def digits_partitions(partitioner: Any, seed: int, test_fraction: float = 0.2) -> tuple[np.ndarray, list[np.ndarray]]:
    """``(labels, partitions)`` of the digits as `corolla.data.digits` splits them for the demo.

    The training part of the global split (`seed`, `test_fraction`), split by `partitioner`;
    partitions index the full data set, as ``digits._partitions`` does.
    """
    import numpy as np

    from ..data import digits

    X, y = digits._load()
    train, _ = digits._global_split(int(seed), float(test_fraction))
    parts = partitioner.split((X[train], y[train]))
    return np.asarray(y), [train[np.asarray(p)] for p in parts]


# name -> (module, function, its node-id and node-count parameters)
_GENERATORS = {
    "synthetic-fedprox": ("synthetic", "synthetic_fedprox", "device_id", "num_devices"),
    "synthetic-leaf": ("synthetic", "synthetic_leaf", "task_id", "num_tasks"),
    "fcube": ("fcube", "fcube", "party_id", "num_parties"),
}


def natural_partitions(
    name: str, options: dict[str, Any], nodes: int | None, seed: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """``(labels, partitions)`` of a naturally partitioned synthetic set: each node's own share.

    The nodes' labels are stacked; a node's share is its train and local test data, except
    for FCUBE, whose test set is shared by all parties and so counted for none.
    """
    import numpy as np

    module, fn_name, id_param, count_param = _GENERATORS[name]
    try:
        fn = getattr(importlib.import_module(f"corolla.data.{module}"), fn_name)
    except (ImportError, AttributeError):
        raise ValueError(f"data set {name!r} is not available in this version of corolla") from None
    params = inspect.signature(fn).parameters
    allowed = [p for p in params if p not in (id_param, count_param)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"data set {name!r} has no option {', '.join(unknown)}; its options: {', '.join(allowed)}")
    n = _NATURAL[name] if nodes is None else nodes
    kwargs = {"seed": seed, **options, count_param: n}
    shares = [fn(i, **kwargs) for i in range(n)]
    if name == "fcube":
        labels = [s.y_train for s in shares]
    else:
        labels = [np.concatenate([s.y_train, s.y_test]) for s in shares]
    ends = np.cumsum([0] + [len(v) for v in labels])
    return np.concatenate(labels), [np.arange(ends[i], ends[i + 1]) for i in range(n)]


# -- the command ---------------------------------------------------------------------------


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..data.inspection import label_counts, plot_counts, summary_table

    name, data_options = args.data[0], _kv(args.data[1:], f"--data {args.data[0]}")
    if args.nodes is not None and args.nodes < 1:
        raise ValueError(f"--nodes must be >= 1, got {args.nodes}")
    part_name, part_options = (
        (args.partitioner[0], _kv(args.partitioner[1:], "--partitioner")) if args.partitioner else (None, {})
    )

    if name in _NATURAL:
        if part_name not in (None, "natural"):
            raise ValueError(
                f"{name} is partitioned naturally (one generated share per node); drop --partitioner "
                f"and set the number of nodes with --nodes"
            )
        labels, parts = natural_partitions(name, data_options, args.nodes, args.seed)
        counts, classes = label_counts(labels, parts)
        described = {"name": "natural", "num_partitions": len(parts)}
    else:
        part_name = part_name or "iid"
        if part_name == "vertical":
            raise ValueError(
                "the vertical partitioner splits the features, not the rows: every node holds every "
                "label, so there are no per-node label counts to inspect"
            )
        partitioner = build_partitioner(part_name, part_options, args.nodes, args.seed)
        described = {"name": part_name, **_describe(partitioner)}
        if name == "digits":
            if data_options:
                raise ValueError(f"data set 'digits' takes no options, got {sorted(data_options)}")
            labels, parts = digits_partitions(partitioner, args.seed)
            counts, classes = label_counts(labels, parts)
        else:
            from ..data.federated import FederatedDataset

            fds = FederatedDataset(name, partitioner, label=args.label, split=args.split, **data_options)
            counts, classes = fds.label_counts()

    opts = data_options if name in _NATURAL else part_options
    title = f"{name} split by {described['name']}" + "".join(f" {k}={v}" for k, v in opts.items())
    title += f" (seed {args.seed})"
    if args.json:
        out = {
            "data": name,
            "data_options": _jsonable(data_options),
            "partitioner": _jsonable(described),
            "seed": args.seed,
            "num_nodes": len(counts),
            "classes": _jsonable(classes),
            "sizes": counts.sum(axis=1).tolist(),
            "counts": counts.tolist(),
        }
        print(json.dumps(out, indent=2))
    else:
        print(summary_table(counts, classes, top=args.top, title=title), end="")
    if args.output:
        path = plot_counts(counts, classes, args.output, kind=args.kind, title=title)
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    return 0
