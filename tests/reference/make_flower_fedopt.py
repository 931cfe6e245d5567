"""Record Flower 1.42's FedAvg / FedAvgM / FedProx / FedAdagrad / FedAdam / FedYogi on fixed replies.

Run by hand with a separate environment that has Flower (never from the test suite):

    python3 -m venv /tmp/flwr-venv && /tmp/flwr-venv/bin/pip install flwr==1.42.0 numpy
    /tmp/flwr-venv/bin/python tests/reference/make_flower_fedopt.py

It imports flwr and numpy only (not corolla). Each case runs Flower's own round loop,
``Strategy.start()``, against a replay grid that answers every train message with the same
pre-drawn replies (absolute arrays + "num-examples" + "loss"), whatever arrays it was sent. It writes

- ``flower_fedopt.npz``: ``init__<key>``, ``reply__r<r>__n<node>__<key>``, ``weights__r<r>``,
  ``loss__r<r>`` (inputs) and ``<case>__r<r>__<key>`` (Flower's global arrays after round r,
  in the dtype Flower produced);
- ``flower_fedopt.json``: versions, node ids, rounds, per case the Flower class, its kwargs, the
  train config Flower sent each round and its aggregated train metrics, plus the defaults of
  each Flower class's hyper-parameters.

tests/test_flower_parity_fedopt.py replays the same replies through corolla.
"""

from __future__ import annotations

import inspect
import json
import logging
import random
import sys
from pathlib import Path

import flwr
import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.serverapp import strategy as fs
from flwr.supercore.task_identity import TaskIdentity

HERE = Path(__file__).resolve().parent
SEED = 20251
NODES = [11, 22, 33, 44]
ROUNDS = 4
SHAPES = {"w": (7, 3), "b": (5,)}

#: case name -> (Flower class, kwargs). Selection args are passed too; evaluation is off.
CASES = {
    "fedavg": ("FedAvg", {}),
    "fedavgm_default": ("FedAvgM", {}),
    "fedavgm": ("FedAvgM", {"server_learning_rate": 0.7, "server_momentum": 0.9}),
    "fedprox": ("FedProx", {"proximal_mu": 0.1}),
    "fedadagrad_default": ("FedAdagrad", {}),
    "fedadagrad": ("FedAdagrad", {"eta": 0.3, "tau": 1e-2}),
    "fedadam_default": ("FedAdam", {}),
    "fedadam": ("FedAdam", {"eta": 0.05, "beta_1": 0.8, "beta_2": 0.95, "tau": 1e-4}),
    "fedyogi_default": ("FedYogi", {}),
    "fedyogi": ("FedYogi", {"eta": 0.2, "beta_1": 0.7, "beta_2": 0.9, "tau": 1e-2}),
}
SELECTION = {"fraction_train": 1.0, "min_train_nodes": len(NODES), "fraction_evaluate": 0.0, "min_evaluate_nodes": 0}


def make_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    data: dict[str, np.ndarray] = {}
    anchor = {k: rng.normal(0.0, 1.0, s).astype(np.float32) for k, s in SHAPES.items()}
    for k, v in anchor.items():
        data[f"init__{k}"] = v.copy()
    for r in range(1, ROUNDS + 1):
        # the cohort drifts each round; each node lands near the drifted anchor
        anchor = {k: v + rng.normal(0.0, 0.5, v.shape).astype(np.float32) for k, v in anchor.items()}
        for n in NODES:
            for k, v in anchor.items():
                data[f"reply__r{r}__n{n}__{k}"] = (v + rng.normal(0.0, 0.3, v.shape)).astype(np.float32)
        data[f"weights__r{r}"] = rng.integers(10, 500, size=len(NODES)).astype(np.int64)
        data[f"loss__r{r}"] = rng.uniform(0.1, 2.0, size=len(NODES))
    return data


class ReplayGrid(Grid):
    """Answers each round's train messages with the pre-drawn replies, in node-id order."""

    def __init__(self, data: dict[str, np.ndarray]) -> None:
        self.data = data
        self.sent_configs: list[dict] = []
        self.sent_arrays: list[dict[str, np.ndarray]] = []

    def set_run(self, run) -> None:  # pragma: no cover - not used by Strategy.start
        raise NotImplementedError

    @property
    def run(self):  # pragma: no cover
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # pragma: no cover
        raise NotImplementedError

    def get_node_ids(self):
        return list(NODES)

    def push_messages(self, messages):  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids):  # pragma: no cover
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):
        messages = sorted(messages, key=lambda m: m.metadata.dst_node_id)
        if not messages:
            return []
        assert all(m.metadata.message_type == "train" for m in messages), "evaluation is off in every case"
        config = dict(messages[0].content["config"])
        r = int(config["server-round"])
        self.sent_configs.append(config)
        self.sent_arrays.append({k: a.numpy() for k, a in messages[0].content["arrays"].items()})
        replies = []
        for i, m in enumerate(messages):
            n = m.metadata.dst_node_id
            arrays = ArrayRecord({k: Array(self.data[f"reply__r{r}__n{n}__{k}"]) for k in SHAPES})
            metrics = MetricRecord(
                {"num-examples": int(self.data[f"weights__r{r}"][i]), "loss": float(self.data[f"loss__r{r}"][i])}
            )
            replies.append(Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=m))
        return replies


def hparam_defaults(cls) -> dict:
    skip = {"self", "weighted_by_key", "arrayrecord_key", "configrecord_key"}
    out = {}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name in skip or p.default is inspect.Parameter.empty or callable(p.default) or p.default is None:
            continue
        out[name] = p.default
    return out


def main() -> None:
    # what flwr's own compat runner sets before a ServerApp builds messages
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    logging.getLogger("flwr").setLevel(logging.WARNING)  # Flower logs every round at INFO
    data = make_inputs()
    meta: dict = {
        "flwr_version": flwr.__version__,
        "numpy_version": np.__version__,
        "python": sys.version.split()[0],
        "seed": SEED,
        "nodes": NODES,
        "rounds": ROUNDS,
        "keys": list(SHAPES),
        "selection": SELECTION,
        "cases": {},
        "flower_defaults": {},
    }
    out = dict(data)
    for case, (cls_name, kwargs) in CASES.items():
        cls = getattr(fs, cls_name)
        meta["flower_defaults"][cls_name] = hparam_defaults(cls)
        random.seed(SEED)  # Flower samples node order with the global `random`
        strategy = cls(**SELECTION, min_available_nodes=len(NODES), **kwargs)
        grid = ReplayGrid(data)
        init = ArrayRecord({k: Array(data[f"init__{k}"]) for k in SHAPES})
        result = strategy.start(grid=grid, initial_arrays=init, num_rounds=ROUNDS, train_config=ConfigRecord())
        assert len(grid.sent_arrays) == ROUNDS
        # Flower's global arrays after round r are what it sent in round r + 1; the last is result.arrays
        after = grid.sent_arrays[1:] + [{k: a.numpy() for k, a in result.arrays.items()}]
        dtypes = []
        for r, arrays in enumerate(after, start=1):
            for k, v in arrays.items():
                out[f"{case}__r{r}__{k}"] = v
            dtypes.append({k: str(v.dtype) for k, v in arrays.items()})
        meta["cases"][case] = {
            "flower_class": cls_name,
            "kwargs": kwargs,
            "train_config": grid.sent_configs,
            "train_metrics": [dict(result.train_metrics_clientapp[r]) for r in range(1, ROUNDS + 1)],
            "output_dtypes": dtypes,
        }
    np.savez_compressed(HERE / "flower_fedopt.npz", **out)
    (HERE / "flower_fedopt.json").write_text(json.dumps(meta, indent=1, sort_keys=False) + "\n")
    print(f"wrote {len(out)} arrays and {len(CASES)} cases with flwr {flwr.__version__}")


if __name__ == "__main__":
    main()
