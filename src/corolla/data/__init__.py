"""Federated data: partitioners that split any data set across nodes, and data sets that need no download.

Partitioners return row indices, one array per node, so no data is copied::

    from corolla.data import Dirichlet
    parts = Dirichlet(num_partitions=20, alpha=0.5, seed=0).split((X, y))
    X_node, y_node = X[parts[node]], y[parts[node]]

`FederatedDataset` does the same lazily for Hugging Face data sets and local files, so each node
loads only its partition. Loaders of bundled data (`digits`, `synthetic`, `fcube`) import their
ML library only when used; `docs/data.md` is the guide.
"""

from .federated import DatasetUnavailable, FederatedDataset
from .partitioners import (
    IID,
    PARTITIONERS,
    Dirichlet,
    DirichletPerNode,
    FeatureSkew,
    LabelQuantity,
    NaturalId,
    Partitioner,
    QuantitySkew,
    Shards,
    VerticalSplit,
)
from .sources import ArraySource, HFSource, RowsView, Source, TorchSource, as_source, labels_of
from .synthetic import FederatedSplit, synthetic_fedprox, synthetic_leaf

__all__ = [
    "IID",
    "PARTITIONERS",
    "ArraySource",
    "DatasetUnavailable",
    "Dirichlet",
    "DirichletPerNode",
    "FeatureSkew",
    "FederatedDataset",
    "FederatedSplit",
    "HFSource",
    "LabelQuantity",
    "NaturalId",
    "Partitioner",
    "QuantitySkew",
    "RowsView",
    "Shards",
    "Source",
    "TorchSource",
    "VerticalSplit",
    "as_source",
    "fcube",
    "labels_of",
    "synthetic_fedprox",
    "synthetic_leaf",
]
