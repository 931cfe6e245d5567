"""Framework-free node helpers: FedNova's tau, and a multinomial logistic regression (MLR).

The MLR is the model of the FedProx Synthetic experiments (Li et al., MLSys 2020):
``softmax(x W + b)`` trained by mini-batch SGD on the cross-entropy. An optional proximal
term adds ``mu (w - w_global)`` to each gradient, which is FedProx's local solver. Arrays are
``{"W": float32 (d, C), "b": float32 (C,)}``.
"""

from __future__ import annotations

import numpy as np

from ...records import Arrays

__all__ = ["fednova_tau", "mlr_evaluate", "mlr_init", "mlr_train"]


def fednova_tau(steps: int, momentum: float = 0.0) -> float:
    """FedNova's normalizer ``||a_k||_1`` for `steps` local SGD steps (Wang et al. 2020, §4).

    Plain SGD gives ``steps``. SGD with momentum rho gives ``[tau - rho (1 - rho^tau) / (1 - rho)] / (1 - rho)``.
    Report it as the train metric ``local-steps``.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if momentum == 0.0:
        return float(steps)
    if not 0.0 < momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    r = float(momentum)
    return (steps - r * (1.0 - r**steps) / (1.0 - r)) / (1.0 - r)


def mlr_init(dim: int, num_classes: int) -> Arrays:
    """Zero weights, as in the FedProx code."""
    return Arrays({"W": np.zeros((dim, num_classes), np.float32), "b": np.zeros(num_classes, np.float32)})


def _logits(W: np.ndarray, b: np.ndarray, X: np.ndarray) -> np.ndarray:
    return X @ W + b


def _softmax_xent(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """(softmax probabilities, mean cross-entropy) of logits z, computed stably."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    p = e / s
    loss = float(np.mean(np.log(s[:, 0]) - z[np.arange(len(y)), y]))
    return p, loss


def mlr_evaluate(arrays: Arrays, X: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of the model on (X, y)."""
    z = _logits(arrays["W"], arrays["b"], X).astype(np.float64)
    _, loss = _softmax_xent(z, y)
    return loss, float(np.mean(z.argmax(axis=1) == y))


def mlr_train(
    arrays: Arrays,
    X: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    rng: np.random.Generator,
    mu: float = 0.0,
) -> tuple[Arrays, int, float]:
    """`epochs` passes of mini-batch SGD from `arrays`; with ``mu > 0``, FedProx's proximal
    term ``mu/2 ||w - w_start||^2`` (its gradient ``mu (w - w_start)`` is added each step).

    Returns (new arrays, number of SGD steps, mean loss over the last epoch's batches).
    """
    # the bias is folded into the weights: [X, 1] @ [[W], [b]]; both get the same proximal pull
    A0 = np.vstack([np.asarray(arrays["W"], np.float32), np.asarray(arrays["b"], np.float32)[None, :]])
    A = A0.copy()
    n, C = len(y), A.shape[1]
    X1 = np.hstack([np.asarray(X, np.float32), np.ones((n, 1), np.float32)])
    Y = np.eye(C, dtype=np.float32)[y]
    lr32, decay, pull = np.float32(lr), np.float32(1.0 - lr * mu), np.float32(lr * mu) * A0
    steps, last = 0, 0.0
    for epoch in range(int(epochs)):
        order = rng.permutation(n)
        Xs, Ys = X1[order], Y[order]  # one gather per epoch; batches are then contiguous views
        final = epoch == epochs - 1
        total = 0.0
        for start in range(0, n, batch_size):
            xb, yb = Xs[start : start + batch_size], Ys[start : start + batch_size]
            z = xb @ A
            z -= z.max(axis=1, keepdims=True)
            np.exp(z, out=z)
            z /= z.sum(axis=1, keepdims=True)  # softmax probabilities
            if final:
                total -= float(np.log(np.maximum((z * yb).sum(axis=1), 1e-30)).sum())
            z -= yb
            z *= lr32 / np.float32(len(xb))  # lr * gradient of the mean cross-entropy w.r.t. the logits
            if mu:  # proximal gradient mu (w - w0), folded in: w <- (1 - lr mu) w + lr mu w0
                A *= decay
                A += pull
            A -= xb.T @ z
            steps += 1
        last = total / max(n, 1)
    return Arrays({"W": A[:-1].copy(), "b": A[-1].copy()}), steps, last
