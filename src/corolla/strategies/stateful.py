"""Server compositions for stateful node algorithms: SCAFFOLD, FedNova, FedDyn and Ditto.

Each is a function that returns a `Strategy`. Each pairs with a node helper in
`corolla.client.helpers.torch` that keeps the node's own state in ``Context.state`` as plain
numpy arrays, so the runtime checkpoints it with the run and a resumed run continues exactly.
FedProx (FedAvg + ``node_config={"proximal-mu": mu}``) is in `named`. Its node helper is
`corolla.client.helpers.torch.proximal_term`.

The parts these compositions need and the generic parts lack:

* `CohortFractionSGD`: ``x += lr * |S|/N * update``. SCAFFOLD's ``c += |S|/N * mean(dc)`` uses it.
  |S| is the selector's cohort size and N is ``ctx.num_nodes``.
* `NormalizeBySteps` and `SideScaledMean`: FedNova's normalized averaging. The transform divides
  each update by the node's step count tau_k and adds tau_k to the side sums. The aggregator
  multiplies the weighted mean by tau_eff = sum p_k tau_k / sum p_k. That rescale sits in the
  aggregator because `Transform.on_aggregate` does not receive the side sums.
* `FedDynCorrection`: FedDyn's server state h and its correction of the mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Unpack

import numpy as np

from ..client.helpers.names import LOCAL_STEPS, SCAFFOLD_PREFIX, model_arrays, scaffold_arrays
from ..records import Arrays, Config, Metrics
from .aggregators import Mean, MeanAcc
from .base import Hparam, RoundCtx, State, StrategyError, Update, resolve
from .named import Selection, _compose
from .server_optimizers import SGD
from .strategy import InvalidReply, Strategy

#: name prefix of SCAFFOLD's control variates among the global arrays
__all__ = [
    "LOCAL_STEPS",
    "SCAFFOLD_PREFIX",
    "CohortFractionSGD",
    "Ditto",
    "FedDyn",
    "FedDynCorrection",
    "FedNova",
    "NormalizeBySteps",
    "SCAFFOLD",
    "SideScaledMean",
    "model_arrays",
    "scaffold_arrays",
]


# -- shared pieces -------------------------------------------------------------------------


def _floating(a: np.ndarray) -> bool:
    return a.dtype.kind in "fc"


@dataclass(frozen=True)
class CohortFractionSGD:
    """SGD whose step is ``lr * |S| / N``: |S| is ``select.cohort_size(N)`` and N is ``ctx.num_nodes``.

    With ``Mean(weighted=False)`` this gives SCAFFOLD's ``c += |S|/N * mean_{i in S} dc_i``,
    which is ``(1/N) * sum_{i in S} dc_i``. The sum is exact only when every sampled node
    replies. When some fail, the mean over the nodes that did reply is scaled by |S|/N.
    """

    select: Any
    lr: Hparam = 1.0

    def init(self, params: Arrays) -> State:
        return {}

    def step(self, state: State, params: Arrays, update: Arrays, ctx: RoundCtx) -> tuple[Arrays, State, Metrics]:
        frac = self.select.cohort_size(ctx.num_nodes) / ctx.num_nodes
        return SGD(lr=float(resolve(self.lr, ctx.round)) * frac).step(state, params, update, ctx)


# -- SCAFFOLD --------------------------------------------------------------------------------


def SCAFFOLD(eta_g: Hparam = 1.0, **selection: Unpack[Selection]) -> Strategy:
    """SCAFFOLD (Karimireddy et al., ICML 2020, arXiv 1910.06378), Algorithm 1.

    The global arrays are the model x followed by the server control variate c (start from
    ``scaffold_arrays(model)``). Each node corrects every local gradient by ``c - c_i``. It
    returns its model y_i and ``c + (c_i+ - c_i)`` for the ``scaffold/*`` arrays
    (`ScaffoldCorrection`, option II), so the update of those arrays is dc_i. Both means are
    unweighted: ``x += eta_g * mean(y_i - x)`` and ``c += |S|/N * mean(dc_i)``.
    """
    base = _compose("SCAFFOLD", SGD(lr=eta_g), selection, Mean(weighted=False))
    return replace(
        base,
        groups={"scaffold": SCAFFOLD_PREFIX + "*", "model": "*"},
        aggregate={"scaffold": Mean(weighted=False), "model": Mean(weighted=False)},
        optimizer={"scaffold": CohortFractionSGD(base.select), "model": SGD(lr=eta_g)},
    )


# -- FedNova ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NormalizeBySteps:
    """FedNova's per-update half: ``d_k = delta_k / tau_k``. It also adds side ``tau`` = tau_k.

    tau_k is the node's train metric `key` (``local-steps``). For plain SGD it is the number of
    local steps. With momentum rho it is ``||a_k||_1``, which `fednova_tau` computes on the
    node. Pair this transform with `SideScaledMean`, which multiplies the mean by tau_eff.
    Arrays that are not floating point pass through unchanged.
    """

    key: str = LOCAL_STEPS
    name: str = "normalize_by_steps"

    def init(self, spec: Arrays) -> State:
        return {}

    def broadcast(self, state: State, ctx: RoundCtx) -> Config:
        return {}

    def per_update(self, broadcast: Config, u: Update, ctx: RoundCtx) -> Update:
        tau = u.metrics.get(self.key)
        if not isinstance(tau, (int, float)) or not np.isfinite(tau) or tau <= 0:
            raise InvalidReply(f"FedNova needs the train metric {self.key!r} > 0 (local steps tau_k), got {tau!r}")
        out = Arrays()
        for k, v in u.arrays.items():
            b = u.base[k]
            out[k] = (b + (v.astype(np.float64) - b) / tau).astype(v.dtype, copy=False) if _floating(v) else v
        return replace(u, arrays=out, side={**u.side, "tau": float(tau)})

    def on_aggregate(self, state: State, aggregate: Arrays, ctx: RoundCtx) -> tuple[Arrays, State, Metrics]:
        return aggregate, state, {}


@dataclass(frozen=True)
class SideScaledMean:
    """A `Mean` whose result is multiplied by ``(side sum of side) / (weight sum)``.

    With `NormalizeBySteps` that factor is tau_eff = sum p_k tau_k / sum p_k. Linear: the side
    sum streams with the mean.
    """

    side: str = "tau"
    inner: Mean = field(default_factory=Mean)
    linear = True

    def min_updates(self) -> int:
        return 1

    def init(self, spec: Arrays) -> State:
        return self.inner.init(spec)

    def open(self, state: State, ctx: RoundCtx) -> MeanAcc:
        return self.inner.open(state, ctx)

    def add(self, acc: MeanAcc, u: Update) -> MeanAcc:
        if self.side not in u.side:
            raise StrategyError(f"SideScaledMean needs side statistic {self.side!r}; put NormalizeBySteps first")
        return self.inner.add(acc, u)

    def result(self, acc: MeanAcc, state: State, ctx: RoundCtx) -> tuple[Arrays, State, Metrics]:
        total = acc.weight
        out, state, metrics = self.inner.result(acc, state, ctx)
        scale = float(acc.side[self.side]) / total
        scaled = Arrays((k, (v * scale).astype(v.dtype, copy=False) if _floating(v) else v) for k, v in out.items())
        return scaled, state, {**metrics, f"{self.side}-eff": scale}


def FedNova(eta_g: Hparam = 1.0, **selection: Unpack[Selection]) -> Strategy:
    """FedNova (Wang et al., NeurIPS 2020, arXiv 2007.07481), normalized averaging, eq. (6)-(7).

    Node k reports tau_k as the train metric ``local-steps`` and its data count n_k as
    ``num-examples``, so p_k = n_k / n. The server computes
    ``x += eta_g * tau_eff * sum_k p_k (y_k - x) / tau_k`` with ``tau_eff = sum_k p_k tau_k``.
    """
    base = _compose("FedNova", SGD(lr=eta_g), selection, SideScaledMean("tau"))
    return replace(base, transforms=(NormalizeBySteps(),))


# -- FedDyn ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FedDynCorrection:
    """FedDyn's server half. Its state is h, one float64 array per floating model array.

    It receives the unweighted mean update ``mean_k(theta_k) - theta_prev`` over the P nodes
    that replied and applies the paper's Algorithm 1, with m = N (``ctx.num_nodes``)::

        h     <- h - alpha * (1/m) * sum_{k in P} (theta_k - theta_prev)
               = h - alpha * (|P|/m) * mean_update          # |P| = the selector's cohort size
        theta <- mean_k(theta_k) - h / alpha                # returned as mean_update - h/alpha

    Use it with `SGD(1)`. |P| is the sampled cohort, so the sum is exact when every sampled
    node replies.
    """

    alpha: float
    select: Any
    name: str = "feddyn"

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise StrategyError(f"FedDyn alpha must be > 0, got {self.alpha}")

    def init(self, spec: Arrays) -> State:
        return {"h": Arrays((k, np.zeros(v.shape, np.float64)) for k, v in spec.items() if _floating(v))}

    def broadcast(self, state: State, ctx: RoundCtx) -> Config:
        return {}

    def per_update(self, broadcast: Config, u: Update, ctx: RoundCtx) -> Update:
        return u

    def on_aggregate(self, state: State, aggregate: Arrays, ctx: RoundCtx) -> tuple[Arrays, State, Metrics]:
        frac = self.select.cohort_size(ctx.num_nodes) / ctx.num_nodes
        h, out = Arrays(), Arrays(aggregate)
        for k, hk in state["h"].items():
            hk = hk - self.alpha * frac * aggregate[k].astype(np.float64)
            h[k] = hk
            out[k] = (aggregate[k] - hk / self.alpha).astype(aggregate[k].dtype, copy=False)
        norm = float(np.sqrt(sum(float(np.vdot(v, v).real) for v in h.values())))
        return out, {**state, "h": h}, {"h-norm": norm}


def FedDyn(alpha: float = 0.01, **selection: Unpack[Selection]) -> Strategy:
    """FedDyn (Acar et al., ICLR 2021, arXiv 2111.04263), Algorithm 1.

    Node k minimizes ``L_k(theta) - <g_k, theta> + alpha/2 ||theta - theta_prev||^2``. It then
    sets ``g_k <- g_k - alpha (theta_k - theta_prev)`` (`FedDynRegularizer`, with g_k kept in
    ``Context.state``). The server keeps h and sets ``theta = mean(theta_k) - h/alpha``
    (`FedDynCorrection`). alpha is sent to the nodes as ``feddyn-alpha``.
    """
    base = _compose("FedDyn", SGD(lr=1.0), selection, Mean(weighted=False), sends={"feddyn-alpha": ("alpha", alpha)})
    return replace(base, transforms=(FedDynCorrection(alpha, base.select),))


# -- Ditto -----------------------------------------------------------------------------------


def Ditto(lam: Hparam = 0.1, **selection: Unpack[Selection]) -> Strategy:
    """Ditto (Li, Hu, Beirami, Smith, ICML 2021, arXiv 2012.04221), Algorithm 1.

    The server side is FedAvg on the global model w. Each node also keeps a personal model
    v_k in ``Context.state`` (`DittoPersonal`). It trains v_k on ``F_k(v) + lam/2 ||v - w^t||^2``,
    where w^t is the global model it received, and reports the personal model's metrics on
    evaluate. lam is sent to the nodes as ``ditto-lambda``.
    """
    return _compose("Ditto", SGD(lr=1.0), selection, sends={"ditto-lambda": ("lam", lam)})
