"""The model (logistic regression, one-vs-rest, trained by SGD) and the data (digits)."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import log_loss

from corolla import Arrays
from corolla.data.digits import (
    NUM_CLASSES,
    NUM_FEATURES,
    load_digits_partition,
    load_digits_test,
)

CLASSES = np.arange(NUM_CLASSES)


def load_data(partition_id: int, num_partitions: int, alpha: float, seed: int) -> tuple[np.ndarray, ...]:
    """This node's ``(X_train, y_train, X_test, y_test)``."""
    X, y, X_test, y_test = load_digits_partition(partition_id, num_partitions, alpha=alpha, seed=seed)
    return X.astype(np.float64), y, X_test.astype(np.float64), y_test


def load_test_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The held-out test set no node trains on, for centralized evaluation."""
    X, y = load_digits_test(seed=seed)
    return X.astype(np.float64), y


def initial_arrays() -> Arrays:
    return Arrays({"coef": np.zeros((NUM_CLASSES, NUM_FEATURES)), "intercept": np.zeros(NUM_CLASSES)})


def make_model(arrays: Arrays, learning_rate: float = 0.1, seed: int = 0) -> SGDClassifier:
    """An SGDClassifier starting from `arrays`, ready for `partial_fit` and `predict_proba`."""
    model = SGDClassifier(
        loss="log_loss", learning_rate="constant", eta0=learning_rate, alpha=1e-4, random_state=seed % 2**32
    )
    # copies: sklearn trains in place, and the received arrays may be shared with other nodes
    model.coef_ = np.array(arrays["coef"], dtype=np.float64)
    model.intercept_ = np.array(arrays["intercept"], dtype=np.float64)
    model.classes_ = CLASSES
    model.n_features_in_ = NUM_FEATURES
    return model


def get_arrays(model: SGDClassifier) -> Arrays:
    return Arrays({"coef": model.coef_, "intercept": model.intercept_})


def train(model: SGDClassifier, X: np.ndarray, y: np.ndarray, epochs: int) -> float:
    """`epochs` passes of SGD over (X, y); returns the training loss afterwards."""
    for _ in range(epochs):
        # classes: a node may hold only some of the digits, the model always has all ten
        model.partial_fit(X, y, classes=CLASSES)
    return evaluate(model, X, y)[0]


def evaluate(model: SGDClassifier, X: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(log loss, accuracy)."""
    proba = model.predict_proba(X)
    loss = log_loss(y, proba, labels=CLASSES)
    accuracy = float(np.mean(CLASSES[proba.argmax(axis=1)] == y))
    return float(loss), accuracy
