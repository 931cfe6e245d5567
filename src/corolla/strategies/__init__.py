"""Strategies assembled from parts: selectors, transforms, aggregators, server optimizers."""

from .aggregators import Mean, MetricsMean
from .base import RoundCtx, State, StrategyError, Update
from .named import FedAvg
from .selectors import Uniform
from .server_optimizers import SGD
from .strategy import InvalidReply, Strategy, check_reply_arrays
from .transforms import Transform, WeightCap

__all__ = [
    "FedAvg",
    "InvalidReply",
    "Mean",
    "MetricsMean",
    "RoundCtx",
    "SGD",
    "State",
    "Strategy",
    "StrategyError",
    "Transform",
    "Uniform",
    "Update",
    "WeightCap",
    "check_reply_arrays",
]
