"""Node-side helpers for the algorithms whose nodes do more than plain local training.

* `corolla.client.helpers.torch` has the PyTorch helpers: `proximal_term` (FedProx),
  `ScaffoldCorrection` (SCAFFOLD), `FedDynRegularizer` (FedDyn), `count_steps` and
  `fednova_tau` (FedNova), and `DittoPersonal` (Ditto).
* `corolla.client.helpers.numpy` has framework-free equivalents: a multinomial logistic
  regression trained by SGD with an optional proximal term, as in the FedProx experiments.

Each pairs with a server composition in `corolla.strategies.stateful` (FedProx: `named`).
Every helper keeps the node's state in ``Context.state`` as plain numpy arrays, so the state
is checkpointed with the run and survives a resume. This package does not import torch;
only ``corolla.client.helpers.torch`` does.
"""

from .numpy import fednova_tau

__all__ = ["fednova_tau"]
