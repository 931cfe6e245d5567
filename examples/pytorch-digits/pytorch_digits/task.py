"""The model (an MLP), its training and evaluation loops, and the data (digits)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from corolla import Arrays
from corolla.data.digits import (
    NUM_CLASSES,
    NUM_FEATURES,
    load_digits_partition,
    load_digits_test,
)

# The network is tiny: extra threads only add overhead, and a simulation already runs one
# worker process per core. Remove this line for a larger model.
torch.set_num_threads(1)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(NUM_FEATURES, 64)
        self.fc2 = nn.Linear(64, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


def load_data(partition_id: int, num_partitions: int, alpha: float, seed: int) -> tuple[torch.Tensor, ...]:
    """This node's ``(X_train, y_train, X_test, y_test)`` as tensors."""
    return tuple(
        torch.from_numpy(a) for a in load_digits_partition(partition_id, num_partitions, alpha=alpha, seed=seed)
    )


def load_test_data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out test set no node trains on, for centralized evaluation."""
    X, y = load_digits_test(seed=seed)
    return torch.from_numpy(X), torch.from_numpy(y)


def get_arrays(net: nn.Module) -> Arrays:
    return Arrays.from_torch(net.state_dict())


def set_arrays(net: nn.Module, arrays: Arrays) -> None:
    net.load_state_dict(arrays.to_torch())  # copies into the network's own parameters


def train(net: nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, batch_size: int) -> float:
    """`epochs` passes of Adam over shuffled mini-batches; returns the mean loss of the last epoch."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    total = 0.0
    for _ in range(epochs):
        total = 0.0
        for idx in torch.randperm(len(y)).split(batch_size):
            opt.zero_grad()
            loss = F.cross_entropy(net(X[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
    return total / len(y)


@torch.no_grad()
def evaluate(net: nn.Module, X: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(cross-entropy loss, accuracy)."""
    net.eval()
    logits = net(X)
    loss = F.cross_entropy(logits, y).item()
    accuracy = (logits.argmax(dim=1) == y).float().mean().item()
    return loss, accuracy
