"""Record Flower 1.42's FedMedian / FedTrimmedAvg / Krum / MultiKrum / Bulyan / QFedAvg on seeded replies.

Run by hand with a separate environment that has Flower (never from the test suite):

    python3 -m venv /tmp/flwr-venv && /tmp/flwr-venv/bin/pip install flwr==1.42.0 numpy
    /tmp/flwr-venv/bin/python tests/reference/make_flower_robust.py

It imports flwr and numpy only (not corolla). Each case runs Flower's own round loop,
``Strategy.start()``, against a replay grid. Each round the grid answers the train messages
with **the arrays it was sent plus a pre-drawn update** per node (so Flower's robust rules
see honest updates near the global model and two attackers far from it), in a shuffled
arrival order, and some nodes answer with an error (so n varies: 13, 11, 12, 13 replies;
Bulyan with f = 2 needs 11). Arrays mix float32 and float64.

It writes

- ``flower_robust.npz``: ``init__<key>``; per case and round, the replies exactly as Flower
  received them: ``<case>__r<r>__reply<i>__<key>`` (i = arrival position), and Flower's global
  arrays after the round: ``<case>__r<r>__out__<key>``;
- ``flower_robust.json``: versions, per case the Flower class and kwargs, and per round the
  arrival order (node ids, ``null`` for an error reply), num-examples and train_loss per reply,
  and Flower's aggregated train metrics; plus the defaults of each class's hyper-parameters.

tests/test_flower_parity_robust.py replays the replies through corolla.
"""

from __future__ import annotations

import inspect
import json
import random
import sys
from pathlib import Path

import flwr
import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.serverapp import strategy as fs
from flwr.supercore.task_identity import TaskIdentity

HERE = Path(__file__).resolve().parent
SEED = 4242
NODES = list(range(101, 114))  # 13 nodes
ATTACKERS = [103, 110]
ROUNDS = 4
#: nodes that answer with an error, per round (n = 13, 11, 12, 13)
FAILING = {1: [], 2: [105, 112], 3: [101], 4: []}
SHAPES = {"w": ((6, 5), np.float32), "b": ((5,), np.float32), "s": ((4,), np.float64)}

#: case name -> (Flower class, kwargs). Selection args are added; evaluation is off.
CASES = {
    "fedmedian": ("FedMedian", {}),
    "fedtrimmedavg": ("FedTrimmedAvg", {}),
    "fedtrimmedavg_b025": ("FedTrimmedAvg", {"beta": 0.25}),
    "krum_default": ("Krum", {}),
    "krum": ("Krum", {"num_malicious_nodes": 2}),
    "multikrum": ("MultiKrum", {"num_malicious_nodes": 2, "num_nodes_to_select": 4}),
    "bulyan": ("Bulyan", {"num_malicious_nodes": 2}),
    "qfedavg": ("QFedAvg", {"client_learning_rate": 0.1}),
    "qfedavg_q2": ("QFedAvg", {"client_learning_rate": 0.05, "q": 2.0}),
}
SELECTION = {
    "fraction_train": 1.0,
    "min_train_nodes": len(NODES),
    "min_available_nodes": len(NODES),
    "fraction_evaluate": 0.0,
    "min_evaluate_nodes": 0,
}


def make_updates() -> dict:
    """Per round and node: the update (added to whatever Flower sends), num-examples, loss."""
    rng = np.random.default_rng(SEED)
    out: dict = {}
    for r in range(1, ROUNDS + 1):
        drift = {k: rng.normal(0.0, 0.2, s) for k, (s, _) in SHAPES.items()}
        for j, n in enumerate(NODES):
            scale = 0.05 * (1.0 + 0.2 * j)  # distinct spreads: Krum scores are well separated
            upd = {k: drift[k] + rng.normal(0.0, scale, d.shape) for k, d in drift.items()}
            if n == ATTACKERS[0]:  # sign flip, amplified
                upd = {k: -5.0 * v for k, v in upd.items()}
            elif n == ATTACKERS[1]:  # scaled
                upd = {k: 10.0 * v for k, v in upd.items()}
            out[(r, n)] = (upd, int(rng.integers(10, 200)), float(rng.uniform(0.05, 3.0)))
    return out


class ReplayGrid(Grid):
    """Answers train messages with sent arrays + the pre-drawn update, in a shuffled order."""

    def __init__(self, updates: dict, rng: np.random.Generator) -> None:
        self.updates = updates
        self.rng = rng
        self.received: list[list[tuple[int | None, dict, int, float]]] = []
        self.sent: dict[int, dict[str, np.ndarray]] = {}  # round -> the global arrays sent that round

    def set_run(self, run) -> None:  # pragma: no cover
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
        messages = list(messages)
        if not messages:
            return []
        assert all(m.metadata.message_type == "train" for m in messages), "evaluation is off in every case"
        r = int(messages[0].content["config"]["server-round"])
        self.sent[r] = {k: a.numpy().copy() for k, a in messages[0].content["arrays"].items()}
        messages = [messages[i] for i in self.rng.permutation(len(messages))]  # arrival order
        replies, log = [], []
        for m in messages:
            n = m.metadata.dst_node_id
            if n in FAILING[r]:
                replies.append(Message(Error(code=1, reason="node failed"), reply_to=m))
                log.append((None, {}, 0, 0.0))
                continue
            upd, num, loss = self.updates[(r, n)]
            sent = {k: a.numpy() for k, a in m.content["arrays"].items()}
            new = {k: (sent[k] + upd[k]).astype(SHAPES[k][1]) for k in SHAPES}
            log.append((n, {k: v.copy() for k, v in new.items()}, num, loss))
            arrays = ArrayRecord({k: Array(v) for k, v in new.items()})
            metrics = MetricRecord({"num-examples": num, "train_loss": loss})
            replies.append(Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=m))
        self.received.append(log)
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
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    rng = np.random.default_rng(SEED + 1)
    init = {k: rng.normal(0.0, 1.0, s).astype(d) for k, (s, d) in SHAPES.items()}
    updates = make_updates()
    meta: dict = {
        "flwr_version": flwr.__version__,
        "numpy_version": np.__version__,
        "python": sys.version.split()[0],
        "seed": SEED,
        "nodes": NODES,
        "attackers": ATTACKERS,
        "failing": {str(k): v for k, v in FAILING.items()},
        "rounds": ROUNDS,
        "keys": list(SHAPES),
        "selection": SELECTION,
        "cases": {},
        "flower_defaults": {},
    }
    out: dict[str, np.ndarray] = {f"init__{k}": v for k, v in init.items()}
    for case, (cls_name, kwargs) in CASES.items():
        cls = getattr(fs, cls_name)
        meta["flower_defaults"][cls_name] = hparam_defaults(cls)
        random.seed(SEED)  # Flower samples node order with the global `random`
        strategy = cls(**SELECTION, **kwargs)
        grid = ReplayGrid(updates, np.random.default_rng(SEED + 2))
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord({k: Array(v.copy()) for k, v in init.items()}),
            num_rounds=ROUNDS,
            train_config=ConfigRecord(),
        )
        assert len(grid.received) == ROUNDS, f"{case}: Flower skipped a round"
        assert len(result.arrays) == len(SHAPES)
        rounds = []
        for r, log in enumerate(grid.received, start=1):
            order, nums, losses = [], [], []
            for i, (n, arrays, num, loss) in enumerate(log):
                order.append(n)
                nums.append(num)
                losses.append(loss)
                for k, v in arrays.items():
                    out[f"{case}__r{r}__reply{i}__{k}"] = v
            rounds.append({
                "order": order,
                "num_examples": nums,
                "train_loss": losses,
                "train_metrics": dict(result.train_metrics_clientapp.get(r, {})),
            })
        for r in range(1, ROUNDS + 1):
            if r < ROUNDS:  # the arrays Flower sent in round r + 1 are its global after round r
                src = grid.sent[r + 1]
            else:
                src = {k: a.numpy() for k, a in result.arrays.items()}
            for k, v in src.items():
                out[f"{case}__r{r}__out__{k}"] = v
        meta["cases"][case] = {"flower_class": cls_name, "kwargs": kwargs, "rounds": rounds}
    np.savez_compressed(HERE / "flower_robust.npz", **out)
    (HERE / "flower_robust.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {len(out)} arrays and {len(CASES)} cases with flwr {flwr.__version__}")


if __name__ == "__main__":
    main()
