"""Named strategies: each a function that returns a `Strategy` composition."""

from __future__ import annotations

from collections.abc import Mapping

from .aggregators import Mean
from .base import Hparam
from .selectors import Uniform
from .server_optimizers import SGD
from .strategy import Strategy


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
    evaluate = (
        None
        if fraction_evaluate == 0 and min_evaluate_nodes == 0
        else Uniform(fraction_evaluate, min_evaluate_nodes, purpose="select-evaluate")
    )
    return Strategy(
        select=Uniform(fraction_train, min_train_nodes),
        aggregate=Mean(),
        optimizer=SGD(lr=1.0),
        node_config=dict(node_config or {}),
        select_evaluate=evaluate,
    )
