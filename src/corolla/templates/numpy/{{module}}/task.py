"""The model (linear regression trained by gradient descent) and the synthetic data."""

from __future__ import annotations

import numpy as np

from corolla import Arrays
from corolla.seeding import rng

NUM_FEATURES = 10
NOISE = 0.1


def initial_arrays() -> Arrays:
    return Arrays({"w": np.zeros(NUM_FEATURES), "b": np.zeros(1)})


def _true_model(seed: int) -> tuple[np.ndarray, float]:
    """The weights every node's data comes from (the same on every node)."""
    gen = rng(seed, "true-model")
    return gen.normal(size=NUM_FEATURES), float(gen.normal())


def _make(gen: np.random.Generator, n: int, seed: int, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w, b = _true_model(seed)
    X = gen.normal(size=(n, NUM_FEATURES)) + shift
    y = X @ w + b + NOISE * gen.normal(size=n)
    return X, y


def load_data(partition_id: int, seed: int, num_examples: int = 100) -> tuple[np.ndarray, ...]:
    """One node's data ``(X_train, y_train, X_test, y_test)``: its own inputs, shifted by a
    node-specific offset (so nodes see different parts of the input space), same true model."""
    gen = rng(seed, "data", partition_id)
    shift = gen.normal(scale=0.5, size=NUM_FEATURES)
    X, y = _make(gen, num_examples, seed, shift)
    n_train = max(1, int(0.8 * num_examples))
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def load_test_data(seed: int, num_examples: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """A held-out set for centralized evaluation, drawn around the origin."""
    return _make(rng(seed, "test-data"), num_examples, seed, np.zeros(NUM_FEATURES))


def mse(arrays: Arrays, X: np.ndarray, y: np.ndarray) -> float:
    err = X @ arrays["w"] + arrays["b"][0] - y
    return float(np.mean(err**2))


def train(arrays: Arrays, X: np.ndarray, y: np.ndarray, epochs: int, lr: float) -> tuple[Arrays, float]:
    """Full-batch gradient descent on the mean squared error; returns new arrays and the final loss."""
    w = arrays["w"].copy()  # never modify the received arrays: they may be shared
    b = arrays["b"].copy()
    for _ in range(epochs):
        err = X @ w + b[0] - y
        w -= lr * 2.0 * (X.T @ err) / len(y)
        b -= lr * 2.0 * err.mean()
    new = Arrays({"w": w, "b": b})
    return new, mse(new, X, y)
