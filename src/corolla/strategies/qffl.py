"""q-FFL (Li, Sanjabi, Beirami and Smith, "Fair Resource Allocation in Federated Learning",
ICLR 2020, arXiv:1905.10497) as a transform, and `QFedAvg` built on it.

q-FedAvg re-weights the nodes by their loss: with ``L = 1 / client_learning_rate`` (the
Lipschitz estimate) and each node's training loss ``F_k``,

    g_k     = L * (w - w_k)                                   # w: global, w_k: the node's model
    Delta_k = (F_k + 1e-10)^q * g_k
    h_k     = q * (F_k + 1e-10)^(q - 1) * ||g_k||^2 + L * (F_k + 1e-10)^q
    w_new   = w - sum_k Delta_k / sum_k h_k

exactly as Flower 1.42's ``QFedAvg.aggregate_train`` (``compute_delta_and_h``: note the norm is
of ``L * (w - w_k)``, not of ``w - w_k``, and the loss gets ``+ 1e-10``).

Composition: `QFFL.per_update` turns each update into the value ``-Delta_k / h_k`` carried with
weight ``h_k``, so the ordinary weighted `Mean` yields ``-sum Delta_k / sum h_k`` and `SGD(1)`
applies it. ``q = 0`` gives ``h_k = L`` and the unweighted mean of the models.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Unpack

import numpy as np

from ..records import Arrays, Config, Metrics
from .base import Hparam, RoundCtx, State, StrategyError, Update, resolve
from .named import Selection, _compose
from .server_optimizers import SGD
from .strategy import InvalidReply, Strategy

__all__ = ["QFFL", "QFedAvg"]

#: added to the loss before any power, as Flower does (keeps F^(q-1) finite at F = 0)
LOSS_EPS = 1e-10


@dataclass(frozen=True)
class QFFL:
    """The q-FFL re-weighting of one update (server-placed; reads the node's reported loss).

    `loss_key` names the training loss in the reply metrics. corolla's examples report
    ``"train-loss"`` (the default); Flower's QFedAvg reads ``"train_loss"``. A reply without it
    fails with an error naming the key."""

    client_learning_rate: Hparam
    q: Hparam = 0.1
    loss_key: str = "train-loss"
    name: str = "qffl"

    #: trait: runs on the server (it needs the loss and the base), changes weights
    placement = "server"

    def __post_init__(self) -> None:
        if not callable(self.client_learning_rate) and not float(self.client_learning_rate) > 0:
            raise StrategyError(f"QFFL.client_learning_rate must be > 0, got {self.client_learning_rate}")
        if not callable(self.q) and not float(self.q) >= 0:
            raise StrategyError(f"QFFL.q must be >= 0, got {self.q}")

    def init(self, spec: Arrays) -> State:
        return {}

    def broadcast(self, state: State, ctx: RoundCtx) -> Config:
        return {}

    def loss(self, u: Update) -> float:
        if self.loss_key not in u.metrics:
            raise InvalidReply(
                f"q-FFL needs each node's training loss, but node {u.node}'s reply metrics have no "
                f"{self.loss_key!r} (they have: {', '.join(sorted(u.metrics)) or 'none'}); report it from the "
                f"train handler or set QFFL(loss_key=...)"
            )
        loss = float(u.metrics[self.loss_key])
        if not np.isfinite(loss) or loss < 0:
            raise InvalidReply(f"q-FFL needs a finite loss >= 0; node {u.node} reported {self.loss_key}={loss}")
        return loss

    def per_update(self, broadcast: Config, u: Update, ctx: RoundCtx) -> Update:
        lr = float(resolve(self.client_learning_rate, ctx.round))
        q = float(resolve(self.q, ctx.round))
        if not lr > 0 or not q >= 0:
            raise StrategyError(f"QFFL needs client_learning_rate > 0 and q >= 0 (round {ctx.round}: {lr}, {q})")
        L = 1.0 / lr
        loss = self.loss(u) + LOSS_EPS
        # g_k = L * (w - w_k), in float64
        grads = {k: L * (np.asarray(u.base[k], np.float64) - np.asarray(a, np.float64)) for k, a in u.arrays.items()}
        norm = float(sum(np.vdot(g, g).real for g in grads.values()))
        loss_q = float(np.float_power(loss, q))
        h = q * float(np.float_power(loss, q - 1)) * norm + L * loss_q
        # carried value: base - Delta_k / h_k (the Mean subtracts the base again), with weight h_k
        scale = loss_q / h
        arrays = Arrays((k, np.asarray(u.base[k], np.float64) - scale * g) for k, g in grads.items())
        return replace(u, arrays=arrays, weight=h)

    def on_aggregate(self, state: State, aggregate: Arrays, ctx: RoundCtx) -> tuple[Arrays, State, Metrics]:
        return aggregate, state, {}


def QFedAvg(
    client_learning_rate: Hparam, q: Hparam = 0.1, loss_key: str = "train-loss", **selection: Unpack[Selection]
) -> Strategy:
    """q-FedAvg (Li et al., "Fair Resource Allocation in Federated Learning", ICLR 2020,
    arXiv:1905.10497): nodes with higher loss get more weight; ``q = 0`` is an unweighted mean.

    Defaults as Flower 1.42 (``q = 0.1``, `client_learning_rate` required), except that the
    loss is read from ``"train-loss"`` (corolla's convention; Flower: ``"train_loss"``)."""
    base = _compose("QFedAvg", SGD(lr=1.0), selection)
    return replace(base, transforms=(QFFL(client_learning_rate, q, loss_key),))
