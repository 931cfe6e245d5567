"""Server optimizers turn the round's aggregate update into new global arrays.

optax-style: frozen config plus explicit state, ``init(params) -> state`` and
``step(state, params, update, ctx) -> (params, state, metrics)``. `update` is the aggregate
the nodes propose, mean(x_node) - x_global: the direction to move, i.e. minus the
pseudo-gradient. ``SGD(lr=1)`` is FedAvg.

- `SGD(lr)`: x + lr * update.
- `Momentum(lr, momentum, nesterov, variant)`: FedAvgM (Hsu et al., 2019).
- `Adam` / `Yogi` / `Adagrad`: FedAdam / FedYogi / FedAdagrad (Reddi et al., 2021), sharing one
  step (`_adaptive_step`): m = EMA(update; b1), v = rule(v, update^2), x + lr_t * m / (sqrt(v) + eps_t).
  They differ only in the second-moment rule and in (lr_t, eps_t).

Every hyper-parameter is a constant or a schedule ``f(round)`` (resolved with ``ctx.round``);
each step reports the effective learning rate as the ``server-lr`` metric.

State is plain data the store checkpoints: ``{"count": int, "m": Arrays, "v": Arrays}``
(Momentum: ``{"count", "trace"}``; SGD: ``{}``). Moments are kept in the array's dtype widened to
at least float32; every step computes in float64 (complex128 for complex arrays) and casts the
new arrays back to their own dtype. Arrays an optimizer does not apply to (integer or bool arrays,
such as a BatchNorm batch counter, for all; complex arrays for Adam/Yogi/Adagrad) take the
aggregate as is, ``x + update``, as under FedAvg, and carry no moments.

Flower 1.42 parity (``flwr/serverapp/strategy``, checked by tests/test_flower_parity_fedopt.py):
``Momentum(variant="torch")`` is FedAvgM, ``Adam(variant="flwr")`` FedAdam, ``Yogi()`` FedYogi,
``Adagrad()`` FedAdagrad, with Flower's defaults. One difference is deliberate: Flower's FedAdam
returns float64 arrays for a float32 model (its bias-corrected lr is a numpy float64); corolla
keeps the model's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import buffers
from ..records import Arrays, Metrics
from .base import Hparam, RoundCtx, State, StrategyError, resolve
from .parallel import halves, in_parallel

# -- shared pieces -------------------------------------------------------------------------------


def _wide(a: np.ndarray) -> np.ndarray:
    """float64 (complex128 for complex) copy/view for computing."""
    return np.asarray(a, np.complex128 if np.iscomplexobj(a) else np.float64)


def _moment_dtype(p: np.ndarray) -> np.dtype:
    return np.result_type(p.dtype, np.float32)


def _plain(p: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The aggregate as is (FedAvg), for arrays an optimizer does not apply to. Written into a
    pooled buffer (`corolla.buffers`): a large model's new arrays reuse last round's memory."""
    out = buffers.empty(p.shape, np.result_type(p, u))
    fp, fu, fo = p.reshape(-1), u.reshape(-1), out.reshape(-1)
    in_parallel([(np.add, fp[lo:hi], fu[lo:hi], fo[lo:hi]) for lo, hi in halves(fo.size, out.nbytes)])
    return out.astype(p.dtype, copy=False)


def _zeros(params: Arrays, kinds: str, fill: float = 0.0) -> Arrays:
    """One moment array per array of a kind in `kinds` ('f' real float, 'c' complex)."""
    return Arrays((k, np.full(p.shape, fill, _moment_dtype(p))) for k, p in params.items() if p.dtype.kind in kinds)


def _check(name: str, value, lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False) -> float:
    """A resolved hyper-parameter as a float, or a StrategyError naming the valid range."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise StrategyError(f"{name} must be a number, got {value!r}") from None
    below = v <= lo if lo_open else v < lo
    above = v >= hi if hi_open else v > hi
    if not math.isfinite(v) or below or above:
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise StrategyError(f"{name} must be in {rng}, got {value!r}")
    return v


def _check_constants(obj, **ranges) -> None:
    """Validate constant hyper-parameters at construction; schedules are checked when resolved."""
    for name, (lo, hi, lo_open, hi_open) in ranges.items():
        value = getattr(obj, name)
        if not callable(value):
            _check(f"{type(obj).__name__}.{name}", value, lo, hi, lo_open, hi_open)


def _check_variant(obj, allowed: tuple[str, ...]) -> None:
    if obj.variant not in allowed:
        raise StrategyError(f"{type(obj).__name__}: variant must be one of {list(allowed)}, got {obj.variant!r}")


_LR = (0.0, math.inf, False, False)  # lr >= 0
_BETA = (0.0, 1.0, False, True)  # 0 <= b < 1
_EPS = (0.0, math.inf, True, False)  # eps > 0

# -- optimizers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SGD:
    """x + lr * update. ``SGD(lr=1)`` is FedAvg; other lr values are FedAvg with a server lr."""

    lr: Hparam = 1.0

    def __post_init__(self) -> None:
        _check_constants(self, lr=_LR)

    def init(self, params: Arrays) -> State:
        return {}

    def plain_step(self, state: State, ctx: RoundCtx) -> tuple[State, Metrics] | None:
        """When this round's step adds the update as it is (lr 1: FedAvg), its (state, metrics),
        so the aggregator may write ``params + update`` itself in its last pass (`Mean.result_params`);
        else None."""
        lr = _check("SGD.lr", resolve(self.lr, ctx.round), *_LR)
        return (state, {"server-lr": lr}) if lr == 1.0 else None

    def step(self, state: State, params: Arrays, update: Arrays, ctx: RoundCtx) -> tuple[Arrays, State, Metrics]:
        lr = _check("SGD.lr", resolve(self.lr, ctx.round), *_LR)
        out = Arrays()
        for k, p in params.items():
            u = update[k]
            if lr == 1.0 or p.dtype.kind not in "fc":
                out[k] = _plain(p, u)  # exact FedAvg
            else:
                out[k] = (_wide(p) + lr * _wide(u)).astype(p.dtype, copy=False)
        return out, state, {"server-lr": lr}


@dataclass(frozen=True)
class Momentum:
    """SGD with heavy-ball momentum on the pseudo-gradient: FedAvgM (Hsu et al., 2019).

    With g = -update (Flower's pseudo-gradient, current - aggregate) and the trace b:

    - ``variant="torch"`` (torch.optim.SGD, dampening 0): b = g at the first step, then
      b = mu * b + g. Kept as a zero-initialised trace, which gives the same b_1 = g.
    - ``variant="ema"``: b = mu * b + (1 - mu) * g from b_0 = 0 (no bias correction).

    New arrays: x - lr * b, or with ``nesterov=True`` x - lr * (mu * b + c * g) with c = 1
    (torch) or 1 - mu (ema). ``momentum=0`` is SGD(lr).

    Flower 1.42's ``FedAvgM(server_learning_rate=lr, server_momentum=mu)`` is
    ``Momentum(lr, mu, variant="torch")`` exactly: its momentum_vector starts as the first
    pseudo-gradient, then mu * v + g; it steps from the arrays it produced last round, which in
    Flower's own loop are the arrays it sent, as here. It has no Nesterov option.

    State: ``{"count": steps taken, "trace": b for the *update* direction}`` (i.e. -b, the sign
    opposite to Flower's momentum_vector).
    """

    lr: Hparam = 1.0
    momentum: Hparam = 0.0
    nesterov: bool = False
    variant: str = "torch"

    def __post_init__(self) -> None:
        _check_constants(self, lr=_LR, momentum=(0.0, 1.0, False, False))
        _check_variant(self, ("torch", "ema"))

    def init(self, params: Arrays) -> State:
        return {"count": 0, "trace": _zeros(params, "fc")}

    def step(self, state: State, params: Arrays, update: Arrays, ctx: RoundCtx) -> tuple[Arrays, State, Metrics]:
        lr = _check("Momentum.lr", resolve(self.lr, ctx.round), *_LR)
        mu = _check("Momentum.momentum", resolve(self.momentum, ctx.round), 0.0, 1.0)
        c = 1.0 if self.variant == "torch" else 1.0 - mu  # weight of the new update in the trace
        out, trace = Arrays(), Arrays()
        for k, p in params.items():
            if k not in state["trace"]:
                out[k] = _plain(p, update[k])
                continue
            u = _wide(update[k])
            b = mu * _wide(state["trace"][k]) + c * u
            direction = mu * b + c * u if self.nesterov else b
            out[k] = (_wide(p) + lr * direction).astype(p.dtype, copy=False)
            trace[k] = b.astype(state["trace"][k].dtype, copy=False)
        return out, {"count": state["count"] + 1, "trace": trace}, {"server-lr": lr, "server-momentum": mu}


def _adaptive_init(params: Arrays, v0: float = 0.0) -> State:
    return {"count": 0, "m": _zeros(params, "f"), "v": _zeros(params, "f", v0)}


def _adaptive_step(
    state: State,
    params: Arrays,
    update: Arrays,
    *,
    lr_t: float,
    eps_t: float,
    b1: float,
    second: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> tuple[Arrays, State]:
    """The step Adam, Yogi and Adagrad share, along the update delta = aggregate - x:

    m = b1 * m + (1 - b1) * delta;  v = second(v, delta^2);  x + lr_t * m / (sqrt(v) + eps_t).
    """
    out, m_new, v_new = Arrays(), Arrays(), Arrays()
    for k, p in params.items():
        if k not in state["m"]:
            out[k] = _plain(p, update[k])
            continue
        d = _wide(update[k])
        m = b1 * _wide(state["m"][k]) + (1.0 - b1) * d
        v = second(_wide(state["v"][k]), d * d)
        out[k] = (_wide(p) + lr_t * m / (np.sqrt(v) + eps_t)).astype(p.dtype, copy=False)
        m_new[k] = m.astype(state["m"][k].dtype, copy=False)
        v_new[k] = v.astype(state["v"][k].dtype, copy=False)
    return out, {"count": state["count"] + 1, "m": m_new, "v": v_new}


@dataclass(frozen=True)
class Adam:
    """Adam on the pseudo-gradient: FedAdam (Reddi et al., 2021). m_0 = v_0 = 0, v = EMA of delta^2.

    With t the step count (1 at the first step; equal to the round when every round steps):

    - ``variant="flwr"`` (Flower 1.42 ``FedAdam``): bias correction folded into the lr with
      exponent t + 1, so the first step already uses 2, and eps (Flower's tau) outside the sqrt:
      x + lr * sqrt(1 - b2^(t+1)) / (1 - b1^(t+1)) * m / (sqrt(v) + eps).
      Flower takes t from ``server_round``; here it is the step count.
    - ``variant="optax"`` (Kingma & Ba, optax.adam): x + lr * m_hat / (sqrt(v_hat) + eps) with
      m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t).

    Metric ``server-lr``: the bias-corrected lr, lr * sqrt(1 - b2^s) / (1 - b1^s), s = t + 1 or t.
    """

    lr: Hparam = 0.1
    b1: Hparam = 0.9
    b2: Hparam = 0.99
    eps: Hparam = 1e-3
    variant: str = "flwr"

    def __post_init__(self) -> None:
        _check_constants(self, lr=_LR, b1=_BETA, b2=_BETA, eps=_EPS)
        _check_variant(self, ("flwr", "optax"))

    def init(self, params: Arrays) -> State:
        return _adaptive_init(params)

    def step(self, state: State, params: Arrays, update: Arrays, ctx: RoundCtx) -> tuple[Arrays, State, Metrics]:
        lr = _check("Adam.lr", resolve(self.lr, ctx.round), *_LR)
        b1 = _check("Adam.b1", resolve(self.b1, ctx.round), *_BETA)
        b2 = _check("Adam.b2", resolve(self.b2, ctx.round), *_BETA)
        eps = _check("Adam.eps", resolve(self.eps, ctx.round), *_EPS)
        t = state["count"] + 1
        s = t + 1 if self.variant == "flwr" else t
        lr_t = lr * math.sqrt(1.0 - b2**s) / (1.0 - b1**s)
        # optax form = flwr form with eps scaled: m_hat/(sqrt(v_hat)+eps) = c * m/(sqrt(v) + eps*sqrt(1-b2^t))
        eps_t = eps if self.variant == "flwr" else eps * math.sqrt(1.0 - b2**t)
        out, state = _adaptive_step(
            state, params, update, lr_t=lr_t, eps_t=eps_t, b1=b1, second=lambda v, d2: b2 * v + (1.0 - b2) * d2
        )
        return out, state, {"server-lr": lr_t}


@dataclass(frozen=True)
class Yogi:
    """Yogi on the pseudo-gradient: FedYogi (Reddi et al., 2021), as Flower 1.42 ``FedYogi``.

    m = b1 * m + (1 - b1) * delta; v = v - (1 - b2) * delta^2 * sign(v - delta^2);
    x + lr * m / (sqrt(v) + eps). No bias correction; m_0 = 0, v_0 = ``initial_accumulator``
    (Flower: 0; the paper suggests >= eps^2).
    """

    lr: Hparam = 1e-2
    b1: Hparam = 0.9
    b2: Hparam = 0.99
    eps: Hparam = 1e-3
    initial_accumulator: float = 0.0

    def __post_init__(self) -> None:
        _check_constants(self, lr=_LR, b1=_BETA, b2=_BETA, eps=_EPS, initial_accumulator=_LR)

    def init(self, params: Arrays) -> State:
        return _adaptive_init(params, self.initial_accumulator)

    def step(self, state: State, params: Arrays, update: Arrays, ctx: RoundCtx) -> tuple[Arrays, State, Metrics]:
        lr = _check("Yogi.lr", resolve(self.lr, ctx.round), *_LR)
        b1 = _check("Yogi.b1", resolve(self.b1, ctx.round), *_BETA)
        b2 = _check("Yogi.b2", resolve(self.b2, ctx.round), *_BETA)
        eps = _check("Yogi.eps", resolve(self.eps, ctx.round), *_EPS)
        out, state = _adaptive_step(
            state,
            params,
            update,
            lr_t=lr,
            eps_t=eps,
            b1=b1,
            second=lambda v, d2: v - (1.0 - b2) * d2 * np.sign(v - d2),
        )
        return out, state, {"server-lr": lr}


@dataclass(frozen=True)
class Adagrad:
    """Adagrad on the pseudo-gradient: FedAdagrad (Reddi et al., 2021), as Flower 1.42 ``FedAdagrad``.

    m = b1 * m + (1 - b1) * delta (Flower fixes b1 = 0, so m = delta); v = v + delta^2;
    x + lr * m / (sqrt(v) + eps). No bias correction; v_0 = ``initial_accumulator`` (Flower: 0).
    """

    lr: Hparam = 0.1
    eps: Hparam = 1e-3
    b1: Hparam = 0.0
    initial_accumulator: float = 0.0

    def __post_init__(self) -> None:
        _check_constants(self, lr=_LR, eps=_EPS, b1=_BETA, initial_accumulator=_LR)

    def init(self, params: Arrays) -> State:
        return _adaptive_init(params, self.initial_accumulator)

    def step(self, state: State, params: Arrays, update: Arrays, ctx: RoundCtx) -> tuple[Arrays, State, Metrics]:
        lr = _check("Adagrad.lr", resolve(self.lr, ctx.round), *_LR)
        eps = _check("Adagrad.eps", resolve(self.eps, ctx.round), *_EPS)
        b1 = _check("Adagrad.b1", resolve(self.b1, ctx.round), *_BETA)
        out, state = _adaptive_step(state, params, update, lr_t=lr, eps_t=eps, b1=b1, second=lambda v, d2: v + d2)
        return out, state, {"server-lr": lr}
