"""corolla's robust strategies and QFedAvg reproduce Flower 1.42 round by round.

The reference (tests/reference/flower_robust.npz/.json) was recorded by
tests/reference/make_flower_robust.py with flwr 1.42.0; this test needs neither flwr nor
network. Each round's replies are fed, in Flower's arrival order and exactly as Flower
received them, through ``Strategy.open/add/close``; corolla carries its own global arrays
from round to round, and after every round they must match Flower's within 1e-6 relative.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from corolla import Arrays
from corolla.strategies.base import RoundCtx
from corolla.strategies.qffl import QFedAvg
from corolla.strategies.robust import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum

REF = Path(__file__).resolve().parent / "reference"
META = json.loads((REF / "flower_robust.json").read_text())
DATA = np.load(REF / "flower_robust.npz")
NO_EVAL = {"fraction_evaluate": 0.0, "min_evaluate_nodes": 0}


def build(case: str):
    c = META["cases"][case]
    cls, kw = c["flower_class"], c["kwargs"]
    if cls == "FedMedian":
        return FedMedian(**NO_EVAL)
    if cls == "FedTrimmedAvg":
        return FedTrimmedAvg(beta=kw.get("beta", META["flower_defaults"]["FedTrimmedAvg"]["beta"]), **NO_EVAL)
    if cls == "Krum":
        return Krum(num_malicious_nodes=kw.get("num_malicious_nodes", 0), **NO_EVAL)
    if cls == "MultiKrum":
        return MultiKrum(kw["num_malicious_nodes"], kw["num_nodes_to_select"], **NO_EVAL)
    if cls == "Bulyan":
        return Bulyan(num_malicious_nodes=kw["num_malicious_nodes"], **NO_EVAL)
    if cls == "QFedAvg":
        return QFedAvg(
            kw["client_learning_rate"], q=kw.get("q", META["flower_defaults"]["QFedAvg"]["q"]),
            loss_key=META["flower_defaults"]["QFedAvg"]["train_loss_key"], **NO_EVAL,
        )
    raise AssertionError(cls)


def test_reference_was_recorded_with_flower_1_42():
    assert META["flwr_version"] == "1.42.0"
    # the named strategies' defaults are Flower's
    assert META["flower_defaults"]["FedTrimmedAvg"]["beta"] == 0.2
    assert META["flower_defaults"]["Krum"]["num_malicious_nodes"] == 0
    assert META["flower_defaults"]["MultiKrum"]["num_nodes_to_select"] == 1
    assert META["flower_defaults"]["QFedAvg"]["q"] == 0.1
    assert FedTrimmedAvg().aggregate.beta == 0.2
    assert Krum().aggregate.f == 0 and MultiKrum().aggregate.m == 1
    assert QFedAvg(0.1).transforms[0].q == 0.1


@pytest.mark.parametrize("case", list(META["cases"]))
def test_matches_flower_every_round(case):
    keys = META["keys"]
    s = build(case)
    state = s.init(Arrays({k: DATA[f"init__{k}"] for k in keys}))
    for r, rnd in enumerate(META["cases"][case]["rounds"], start=1):
        ctx = RoundCtx(round=r, seed=0, num_nodes=len(META["nodes"]))
        acc = s.open(state, ctx)
        for i, node in enumerate(rnd["order"]):
            if node is None:  # an error reply: Flower drops it, corolla never sees it
                continue
            arrays = Arrays({k: DATA[f"{case}__r{r}__reply{i}__{k}"] for k in keys})
            metrics = {"num-examples": rnd["num_examples"][i], "train_loss": rnd["train_loss"][i]}
            s.add(acc, node, arrays, metrics, ctx)
        state, train_metrics, _ = s.close(acc, ctx)
        for k in keys:
            ours = state["params"][k]
            theirs = DATA[f"{case}__r{r}__out__{k}"]
            assert ours.dtype == DATA[f"init__{k}"].dtype  # corolla keeps the model's dtypes
            scale = max(1.0, float(np.abs(theirs).max()))
            err = float(np.abs(ours.astype(np.float64) - theirs.astype(np.float64)).max()) / scale
            assert err <= 1e-6, f"{case} round {r} array {k!r}: relative error {err:.2e}"
        if META["cases"][case]["flower_class"] in ("FedMedian", "FedTrimmedAvg"):
            # both average train metrics over all replies, weighted by num-examples
            assert train_metrics["train_loss"] == pytest.approx(rnd["train_metrics"]["train_loss"], rel=1e-9)


def test_attackers_are_excluded_by_krum_like_flower():
    """The reference includes two attackers; Krum (f=2) must never return theirs."""
    keys = META["keys"]
    for case in ("krum", "multikrum", "bulyan"):
        for r, rnd in enumerate(META["cases"][case]["rounds"], start=1):
            prev = {k: DATA[f"{case}__r{r - 1}__out__{k}"] if r > 1 else DATA[f"init__{k}"] for k in keys}
            out = {k: DATA[f"{case}__r{r}__out__{k}"] for k in keys}
            step = np.sqrt(sum(float(((out[k] - prev[k]) ** 2).sum()) for k in keys))
            assert step < 3.0, (case, r, step)  # the attackers move the model by 5x-10x more
