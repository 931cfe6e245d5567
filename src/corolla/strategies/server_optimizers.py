"""Server optimizers turn the round's aggregate update into new global arrays.

``step(state, params, update, ctx) -> (params, state, metrics)``, where `update` is the
aggregated change the nodes propose (mean of x_node - x_global). SGD(lr=1) is FedAvg.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..records import Arrays, Metrics
from .base import Hparam, RoundCtx, State, resolve


@dataclass(frozen=True)
class SGD:
    lr: Hparam = 1.0

    def init(self, params: Arrays) -> State:
        return {}

    def step(self, state: State, params: Arrays, update: Arrays, ctx: RoundCtx) -> tuple[Arrays, State, Metrics]:
        lr = float(resolve(self.lr, ctx.round))
        out = Arrays()
        for k, p in params.items():
            u = update[k]
            if lr == 1.0:
                new = p + u
            else:
                new = p + (lr * u.astype(np.float64)).astype(p.dtype, copy=False)
            out[k] = new.astype(p.dtype, copy=False)
        return out, state, {"server-lr": lr}
