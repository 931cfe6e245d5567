"""Named strategies: each a function that returns a `Strategy` composition.

They share FedAvg's selection arguments (``fraction_train``, ``min_train_nodes``,
``fraction_evaluate``, ``min_evaluate_nodes``, ``node_config``), passed as keywords, and
the hyper-parameter names and defaults of Flower 1.42's classes of the same name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict, Unpack

from .aggregators import Mean
from .base import Hparam, StrategyError
from .selectors import Uniform
from .server_optimizers import SGD, Adagrad, Adam, Momentum, Yogi
from .strategy import Strategy


class Selection(TypedDict, total=False):
    """The selection keywords every named strategy takes; defaults as in `FedAvg`."""

    fraction_train: float
    min_train_nodes: int
    fraction_evaluate: float
    min_evaluate_nodes: int
    node_config: Mapping[str, Hparam] | None


_SELECTION_DEFAULTS: dict[str, Any] = {
    "fraction_train": 1.0,
    "min_train_nodes": 2,
    "fraction_evaluate": 1.0,
    "min_evaluate_nodes": 2,
    "node_config": None,
}


def _compose(
    name: str,
    optimizer: Any,
    selection: Mapping[str, Any],
    aggregate: Any = None,
    sends: Mapping[str, tuple[str, Hparam]] | None = None,
) -> Strategy:
    """Uniform selection + `aggregate` (default: weighted `Mean`) + `optimizer`: the pieces the
    named strategies share. Without `min_train_nodes`, as many nodes as the aggregator needs
    (at least 2) are sampled. `sends` maps the strategy's own node_config keys to (argument,
    value), e.g. ``{"proximal-mu": ("proximal_mu", 0.1)}``; a user node_config that sets one
    of them is refused, naming the argument, instead of silently overriding it."""
    unknown = sorted(set(selection) - set(_SELECTION_DEFAULTS))
    if unknown:
        hint = "; the nodes' learning rate goes in node_config" if "eta_l" in unknown else ""
        raise TypeError(
            f"{name}() got unexpected keyword argument(s) {unknown}; it takes its own hyper-parameters "
            f"and the selection keywords {list(_SELECTION_DEFAULTS)}{hint}"
        )
    aggregate = Mean() if aggregate is None else aggregate
    need = max(2, int(getattr(aggregate, "min_updates", lambda: 1)()))
    s = {**_SELECTION_DEFAULTS, "min_train_nodes": need, **selection}
    node_config = dict(s["node_config"] or {})
    clash = sorted(set(node_config) & set(sends or {}))
    if clash:
        args = ", ".join(f"{sends[k][0]}=..." for k in clash)  # type: ignore[index]
        raise StrategyError(f"{name} sets node_config {clash} itself; pass {args} instead")
    evaluate = (
        None
        if s["fraction_evaluate"] == 0 and s["min_evaluate_nodes"] == 0
        else Uniform(s["fraction_evaluate"], s["min_evaluate_nodes"], purpose="select-evaluate")
    )
    return Strategy(
        select=Uniform(s["fraction_train"], s["min_train_nodes"]),
        aggregate=aggregate,
        optimizer=optimizer,
        node_config={**node_config, **{k: v for k, (_, v) in (sends or {}).items()}},
        select_evaluate=evaluate,
    )


def FedAvg(
    fraction_train: float = 1.0,
    min_train_nodes: int = 2,
    fraction_evaluate: float = 1.0,
    min_evaluate_nodes: int = 2,
    node_config: Mapping[str, Hparam] | None = None,
) -> Strategy:
    """Federated averaging (McMahan et al., 2017): weighted mean of the nodes' models.

    Set ``fraction_evaluate=0`` and ``min_evaluate_nodes=0`` to skip federated evaluation.
    """
    selection = dict(
        fraction_train=fraction_train,
        min_train_nodes=min_train_nodes,
        fraction_evaluate=fraction_evaluate,
        min_evaluate_nodes=min_evaluate_nodes,
        node_config=node_config,
    )
    return _compose("FedAvg", SGD(lr=1.0), selection)


def FedAvgM(
    server_learning_rate: Hparam = 1.0, server_momentum: Hparam = 0.0, **selection: Unpack[Selection]
) -> Strategy:
    """FedAvg with server momentum (Hsu et al., 2019, arXiv:1909.06335).

    x <- x - lr * b with b = momentum * b + (x - mean) (torch convention: b = x - mean in round 1).
    The defaults (lr 1, momentum 0) are plain FedAvg, as in Flower 1.42's ``FedAvgM``.
    """
    return _compose("FedAvgM", Momentum(lr=server_learning_rate, momentum=server_momentum, variant="torch"), selection)


def FedProx(proximal_mu: Hparam = 0.0, **selection: Unpack[Selection]) -> Strategy:
    """FedProx (Li et al., 2020, arXiv:1812.06127): FedAvg on the server; nodes add the proximal term.

    Sends ``"proximal-mu"`` in every train config; the node minimises loss + mu/2 ||w - w_global||^2
    (see the node helper). ``proximal_mu=0`` (Flower 1.42's default) is FedAvg.
    """
    return _compose("FedProx", SGD(lr=1.0), selection, sends={"proximal-mu": ("proximal_mu", proximal_mu)})


def FedAdagrad(eta: Hparam = 1e-1, tau: Hparam = 1e-3, **selection: Unpack[Selection]) -> Strategy:
    """FedAdagrad (Reddi et al., 2021, "Adaptive Federated Optimization", arXiv:2003.00295).

    v += delta^2; x += eta * delta / (sqrt(v) + tau), delta = mean - x; v_0 = 0, as in Flower 1.42.
    The nodes' learning rate (Flower's unused ``eta_l``) belongs in ``node_config``.
    """
    return _compose("FedAdagrad", Adagrad(lr=eta, eps=tau), selection)


def FedAdam(
    eta: Hparam = 1e-1, beta_1: Hparam = 0.9, beta_2: Hparam = 0.99, tau: Hparam = 1e-3, **selection: Unpack[Selection]
) -> Strategy:
    """FedAdam (Reddi et al., 2021, "Adaptive Federated Optimization", arXiv:2003.00295).

    Adam on delta = mean - x with Flower 1.42's bias-corrected lr and tau outside the sqrt
    (`Adam(variant="flwr")`). The nodes' learning rate (Flower's unused ``eta_l``) belongs in ``node_config``.
    """
    return _compose("FedAdam", Adam(lr=eta, b1=beta_1, b2=beta_2, eps=tau, variant="flwr"), selection)


def FedYogi(
    eta: Hparam = 1e-2, beta_1: Hparam = 0.9, beta_2: Hparam = 0.99, tau: Hparam = 1e-3, **selection: Unpack[Selection]
) -> Strategy:
    """FedYogi (Reddi et al., 2021, "Adaptive Federated Optimization", arXiv:2003.00295).

    Yogi's additive second moment on delta = mean - x, no bias correction, as in Flower 1.42.
    The nodes' learning rate (Flower's unused ``eta_l``) belongs in ``node_config``.
    """
    return _compose("FedYogi", Yogi(lr=eta, b1=beta_1, b2=beta_2, eps=tau), selection)
