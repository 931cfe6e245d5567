"""PyTorch node helpers for FedProx, SCAFFOLD, FedDyn, FedNova and Ditto.

Each keeps its state in ``Context.state`` as plain numpy arrays (``{name: ndarray}``), so the
state is checkpointed with the run and a resumed run continues exactly. Typical use in a train
handler (SCAFFOLD)::

    sc = ScaffoldCorrection(net, msg.content.arrays, ctx, lr=lr)   # loads x into net
    opt = torch.optim.SGD(net.parameters(), lr=lr)                 # plain SGD (option II)
    for xb, yb in batches:
        opt.zero_grad()
        F.cross_entropy(net(xb), yb).backward()
        sc.correct()                                               # grad += c - c_i
        opt.step()
    return msg.reply(arrays=sc.finish(), metrics={"num-examples": n})

The server compositions are in `corolla.strategies.stateful` (FedProx: `corolla.strategies.named`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ...records import Arrays
from ..context import Context
from .names import SCAFFOLD_PREFIX, scaffold_arrays
from .numpy import fednova_tau

__all__ = [
    "DittoPersonal",
    "FedDynRegularizer",
    "ScaffoldCorrection",
    "count_steps",
    "fednova_tau",
    "proximal_term",
    "snapshot",
]


def _np(t: torch.Tensor) -> np.ndarray:
    """A numpy copy that owns its memory (safe to keep in Context.state)."""
    return t.detach().cpu().numpy().copy()


def _tensor(a: Any, like: torch.Tensor) -> torch.Tensor:
    """`a` (numpy array or tensor) as a tensor with `like`'s dtype and device. Always a copy,
    so read-only received arrays are never written."""
    if isinstance(a, torch.Tensor):
        return a.detach().to(device=like.device, dtype=like.dtype).clone()
    return torch.tensor(np.asarray(a), dtype=like.dtype, device=like.device)


def _params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _load(model: nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    model.load_state_dict(Arrays(arrays).to_torch())


def snapshot(model: nn.Module) -> list[torch.Tensor]:
    """Detached copies of the trainable parameters, in ``model.parameters()`` order (e.g. the
    global weights, taken right after loading them, for `proximal_term`)."""
    return [p.detach().clone() for _, p in _params(model)]


# -- FedProx ---------------------------------------------------------------------------------


def proximal_term(
    model: nn.Module, global_params: Sequence[torch.Tensor] | Mapping[str, Any], mu: float
) -> torch.Tensor:
    """FedProx's proximal term ``mu/2 * sum_w ||w - w_global||^2`` over the trainable parameters.

    Add it to the loss. Its gradient is ``mu (w - w_global)``. `global_params` is `snapshot(model)`
    taken after loading the global weights, or a mapping of parameter name to array or tensor.
    With ``mu == 0`` it returns a zero tensor (no graph).
    """
    params = _params(model)
    if isinstance(global_params, Mapping):
        ref = [_tensor(global_params[n], p) for n, p in params]
    else:
        ref = list(global_params)
        if len(ref) != len(params):
            raise ValueError(f"{len(ref)} global tensors for {len(params)} trainable parameters; use snapshot(model)")
    if not mu:
        return torch.zeros((), dtype=params[0][1].dtype if params else torch.float32)
    total = sum(((p - g) ** 2).sum() for (_, p), g in zip(params, ref))
    return 0.5 * float(mu) * total


# -- FedNova ---------------------------------------------------------------------------------


class count_steps:
    """Counts ``optimizer.step()`` calls while active (a step post-hook)::

    with count_steps(opt) as steps:
        ...train...
    metrics["local-steps"] = steps.tau(momentum=0.9)   # FedNova's tau_k
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self.count = 0
        self._handle: Any = None

    def _hook(self, *_: Any) -> None:
        self.count += 1

    def __enter__(self) -> "count_steps":
        self._handle = self.optimizer.register_step_post_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def tau(self, momentum: float = 0.0) -> float:
        """FedNova's normalizer for the steps counted (see `fednova_tau`)."""
        return fednova_tau(self.count, momentum)


# -- SCAFFOLD --------------------------------------------------------------------------------


class ScaffoldCorrection:
    """SCAFFOLD's node side (Karimireddy et al. 2020, Algorithm 1, option II).

    Construct it with the received arrays (model x, then the ``scaffold/*`` controls c). It loads
    x into `model` and reads c_i from ``ctx.state[key]`` (zero on a node's first round). After
    each ``loss.backward()``, `correct` adds ``c - c_i`` to every gradient and counts the step.
    Train with plain SGD at learning rate `lr`. Then `finish` computes
    ``c_i+ = c_i - c + (x - y_i) / (K * lr)``, stores it and returns the reply arrays:
    y_i, and ``c + (c_i+ - c_i)`` for the controls, in the received order.
    """

    def __init__(self, model: nn.Module, arrays: Arrays, ctx: Context, lr: float, key: str = "scaffold"):
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.model, self.ctx, self.lr, self.key = model, ctx, float(lr), key
        self.names = list(arrays.keys())
        _load(model, {k: v for k, v in arrays.items() if not k.startswith(SCAFFOLD_PREFIX)})
        self.controls = {k[len(SCAFFOLD_PREFIX) :]: arrays[k] for k in arrays if k.startswith(SCAFFOLD_PREFIX)}
        if not self.controls:
            raise ValueError(
                "the received arrays hold no 'scaffold/*' control variates; start SCAFFOLD from "
                "ScaffoldCorrection.initial_arrays(model) (or strategies.stateful.scaffold_arrays)"
            )
        stored = ctx.state.get(key, {}).get("c_i", {})
        self.params = [(n, p) for n, p in _params(model) if n in self.controls]
        self.x = [p.detach().clone() for _, p in self.params]
        self.c = [_tensor(self.controls[n], p) for n, p in self.params]
        self.c_i = [_tensor(stored[n], p) if n in stored else torch.zeros_like(p) for n, p in self.params]
        self.diff = [c - ci for c, ci in zip(self.c, self.c_i)]
        self.steps = 0

    @staticmethod
    def initial_arrays(model: nn.Module) -> Arrays:
        """The model's state dict followed by a zero control per trainable parameter."""
        return scaffold_arrays(Arrays.from_torch(model.state_dict()), [n for n, _ in _params(model)]).copy()

    @torch.no_grad()
    def correct(self) -> None:
        """``grad += c - c_i`` for every controlled parameter. Call it between backward and step."""
        for (_, p), d in zip(self.params, self.diff):
            if p.grad is None:
                p.grad = d.clone()
            else:
                p.grad.add_(d)
        self.steps += 1

    @torch.no_grad()
    def finish(self) -> Arrays:
        """Store c_i+ (option II) in ``ctx.state`` and return the reply arrays."""
        K = self.steps
        new_c_i, out_c = {}, {}
        for (n, p), x, c, ci in zip(self.params, self.x, self.c, self.c_i):
            c_plus = ci - c + (x - p.detach()) / (K * self.lr) if K > 0 else ci
            new_c_i[n] = _np(c_plus)
            out_c[n] = _np(c + (c_plus - ci))
        self.ctx.state[self.key] = {"c_i": new_c_i, "steps": K}
        model = Arrays.from_torch(self.model.state_dict())
        out = Arrays()
        for k in self.names:
            if k.startswith(SCAFFOLD_PREFIX):
                n = k[len(SCAFFOLD_PREFIX) :]
                # a control with no trainable parameter behind it is returned unchanged (dc = 0)
                out[k] = out_c[n] if n in out_c else np.array(self.controls[n])
            else:
                out[k] = model[k].copy()
        return out


# -- FedDyn ----------------------------------------------------------------------------------


class FedDynRegularizer:
    """FedDyn's node side (Acar et al. 2021, Algorithm 1).

    Create it right after loading the global weights theta_prev into `model`. Add `penalty()`
    to the loss: ``-<g_k, theta> + alpha/2 ||theta - theta_prev||^2``, where g_k is the node's
    gradient state from ``ctx.state[key]`` (zero at first). After training, `finish` sets
    ``g_k <- g_k - alpha (theta_k - theta_prev)`` and stores it.
    """

    def __init__(self, model: nn.Module, ctx: Context, alpha: float, key: str = "feddyn"):
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.model, self.ctx, self.alpha, self.key = model, ctx, float(alpha), key
        self.params = _params(model)
        self.prev = snapshot(model)
        stored = ctx.state.get(key, {}).get("grad", {})
        self.grad = [_tensor(stored[n], p) if n in stored else torch.zeros_like(p) for n, p in self.params]

    def penalty(self) -> torch.Tensor:
        lin = sum((g * p).sum() for g, (_, p) in zip(self.grad, self.params))
        quad = sum(((p - q) ** 2).sum() for (_, p), q in zip(self.params, self.prev))
        return -lin + 0.5 * self.alpha * quad

    @torch.no_grad()
    def finish(self) -> None:
        self.grad = [g - self.alpha * (p.detach() - q) for g, (_, p), q in zip(self.grad, self.params, self.prev)]
        self.ctx.state[self.key] = {"grad": {n: _np(g) for (n, _), g in zip(self.params, self.grad)}}


# -- Ditto -----------------------------------------------------------------------------------


class DittoPersonal:
    """Ditto's personal model v_k (Li et al. 2021, Algorithm 1), kept in ``ctx.state[key]``.

    In the train handler, after training the global model as usual::

        ditto = DittoPersonal(ctx, lam=config["ditto-lambda"])
        ditto.load(personal_net, msg.content.arrays)   # v_k (first time: the global w^t)
        ... loss = F(personal_net(x), y) + ditto.penalty(personal_net) ...
        ditto.save(personal_net)

    The penalty is ``lam/2 ||v - w^t||^2``, with w^t the global model received this round.
    In the evaluate handler, ``DittoPersonal(ctx).load(net, arrays)`` loads the personal model
    when there is one. Report its metrics.
    """

    def __init__(self, ctx: Context, lam: float = 0.0, key: str = "ditto"):
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        self.ctx, self.lam, self.key = ctx, float(lam), key
        self.ref: list[torch.Tensor] = []

    @property
    def has_personal(self) -> bool:
        return "personal" in self.ctx.state.get(self.key, {})

    def load(self, model: nn.Module, global_arrays: Arrays) -> bool:
        """Load v_k (or, with none stored yet, the global arrays) into `model`. Snapshot w^t for
        the penalty. Returns whether a personal model was loaded."""
        personal = self.ctx.state.get(self.key, {}).get("personal")
        _load(model, global_arrays)
        self.ref = snapshot(model)
        if personal is not None:
            _load(model, personal)
        return personal is not None

    def penalty(self, model: nn.Module) -> torch.Tensor:
        if not self.ref:
            raise RuntimeError("call load(model, global_arrays) before penalty(model)")
        return proximal_term(model, self.ref, self.lam)

    def save(self, model: nn.Module) -> None:
        self.ctx.state[self.key] = {"personal": {k: _np(v) for k, v in model.state_dict().items()}}
