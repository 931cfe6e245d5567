"""corolla's FedAvg / FedAvgM / FedProx / FedAdagrad / FedAdam / FedYogi against Flower 1.42.

tests/reference/make_flower_fedopt.py ran Flower's own strategies (``Strategy.start`` over a
replay grid) on fixed replies and saved inputs and outputs; here the same replies go through
corolla's named strategies (init / configure_train / open / add / close), round by round.
Flower is not needed to run this.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest

from corolla import Arrays
from corolla.strategies import RoundCtx, named

REF = Path(__file__).parent / "reference"
META = json.loads((REF / "flower_fedopt.json").read_text())
DATA = dict(np.load(REF / "flower_fedopt.npz"))
NODES: list[int] = META["nodes"]
KEYS: list[str] = META["keys"]
FLOWER_ONLY = {"eta_l", "min_available_nodes"}  # Flower arguments corolla does not take (eta_l is unused there)


def replay(case: str):
    """Yield (round, corolla state after the round, train metrics, train config, Flower's arrays)."""
    spec = META["cases"][case]
    strategy = getattr(named, spec["flower_class"])(**spec["kwargs"], **META["selection"])
    state = strategy.init(Arrays((k, DATA[f"init__{k}"]) for k in KEYS))
    for r in range(1, META["rounds"] + 1):
        ctx = RoundCtx(round=r, seed=0, num_nodes=len(NODES))
        nodes, config, state = strategy.configure_train(state, NODES, ctx)
        assert nodes == NODES
        acc = strategy.open(state, ctx)
        for i, n in enumerate(NODES):
            reply = Arrays((k, DATA[f"reply__r{r}__n{n}__{k}"]) for k in KEYS)
            metrics = {"num-examples": int(DATA[f"weights__r{r}"][i]), "loss": float(DATA[f"loss__r{r}"][i])}
            strategy.add(acc, n, reply, metrics, ctx)
        state, train_metrics, _ = strategy.close(acc, ctx)
        yield r, state, train_metrics, config, {k: DATA[f"{case}__r{r}__{k}"] for k in KEYS}


def test_reference_was_made_with_flower_1_42():
    assert META["flwr_version"] == "1.42.0"
    assert set(META["cases"]) >= {"fedavg", "fedavgm", "fedprox", "fedadagrad", "fedadam", "fedyogi"}


@pytest.mark.parametrize("case", sorted(META["cases"]))
def test_matches_flower_every_round(case):
    spec = META["cases"][case]
    rounds = 0
    for r, state, train_metrics, config, flower in replay(case):
        for k in KEYS:
            ours = state["params"][k]
            assert ours.dtype == DATA[f"init__{k}"].dtype  # corolla keeps float32 (Flower's FedAdam: float64)
            np.testing.assert_allclose(ours, flower[k], rtol=1e-6, atol=1e-7, err_msg=f"{case} round {r} {k!r}")
        np.testing.assert_allclose(train_metrics["loss"], spec["train_metrics"][r - 1]["loss"], rtol=1e-12)
        sent = {k: v for k, v in spec["train_config"][r - 1].items() if k != "server-round"}  # corolla: "round"
        assert config == sent
        rounds += 1
    assert rounds == META["rounds"]


def test_optimizers_actually_move_away_from_fedavg():
    """Guard against a vacuous reference: the server optimizers change the trajectory."""
    fedavg = DATA["fedavg__r4__w"]
    for case in ("fedavgm", "fedadagrad", "fedadam", "fedyogi"):
        assert np.abs(DATA[f"{case}__r4__w"] - fedavg).max() > 1e-2, case
    np.testing.assert_array_equal(DATA["fedprox__r4__w"], fedavg)  # FedProx differs only on the nodes


@pytest.mark.parametrize("cls", sorted(META["flower_defaults"]))
def test_defaults_equal_flowers(cls):
    ours = {
        n: p.default
        for n, p in inspect.signature(getattr(named, cls)).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    ours = {**named._SELECTION_DEFAULTS, **ours}  # selection keywords arrive via **selection
    for name, value in META["flower_defaults"][cls].items():
        if name not in FLOWER_ONLY:
            assert ours[name] == value, f"{cls}.{name}: corolla {ours[name]!r}, Flower {value!r}"
