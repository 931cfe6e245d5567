"""Strategies assembled from parts: selectors, transforms, aggregators, server optimizers.

A named strategy is a function returning a `Strategy` composition, never a subclass.
"""

from .aggregators import Mean, MetricsMean
from .base import RoundCtx, State, StrategyError, Update
from .local_layers import FedBN, FedPer, restore_local, save_local, with_local
from .named import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedProx, FedYogi
from .qffl import QFFL, QFedAvg
from .robust import (
    RFA,
    Bulyan,
    BulyanAggregate,
    FedMedian,
    FedTrimmedAvg,
    GeometricMedian,
    Krum,
    KrumSelect,
    Median,
    MultiKrum,
    TrimmedMean,
)
from .selectors import ByProperty, ProportionalToSize, Selector, Uniform
from .server_optimizers import SGD, Adagrad, Adam, Momentum, Yogi
from .stateful import SCAFFOLD, Ditto, FedDyn, FedNova, NormalizeBySteps, SideScaledMean
from .strategy import InvalidReply, Strategy, check_reply_arrays
from .transforms import ClipNorm, Transform, WeightCap
from .update_buffer import UpdateBuffer

__all__ = [
    # composition
    "Strategy",
    "StrategyError",
    "InvalidReply",
    "RoundCtx",
    "State",
    "Update",
    "check_reply_arrays",
    # parts
    "Uniform",
    "ProportionalToSize",
    "ByProperty",
    "Selector",
    "Mean",
    "MetricsMean",
    "Median",
    "TrimmedMean",
    "KrumSelect",
    "BulyanAggregate",
    "GeometricMedian",
    "UpdateBuffer",
    "SGD",
    "Momentum",
    "Adam",
    "Yogi",
    "Adagrad",
    "Transform",
    "WeightCap",
    "ClipNorm",
    "QFFL",
    # named strategies
    "FedAvg",
    "FedAvgM",
    "FedProx",
    "FedAdagrad",
    "FedAdam",
    "FedYogi",
    "FedMedian",
    "FedTrimmedAvg",
    "Krum",
    "MultiKrum",
    "Bulyan",
    "RFA",
    "QFedAvg",
    "SCAFFOLD",
    "FedNova",
    "FedDyn",
    "Ditto",
    "NormalizeBySteps",
    "SideScaledMean",
    "FedBN",
    "FedPer",
    "with_local",
    "restore_local",
    "save_local",
]
