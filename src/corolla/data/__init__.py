"""Federated data: partitioners that split any data set across nodes, and bundled data sets.

Partitioners return row indices, one array per node, so no data is copied::

    from corolla.data import Dirichlet
    parts = Dirichlet(num_partitions=20, alpha=0.5, seed=0).split((X, y))
    X_node, y_node = X[parts[node]], y[parts[node]]

Data set loaders (e.g. `corolla.data.digits`) import their ML library only when used.
"""

from .partitioners import IID, Dirichlet, Partitioner
from .sources import ArraySource, HFSource, RowsView, Source, TorchSource, as_source, labels_of

__all__ = [
    "IID",
    "ArraySource",
    "Dirichlet",
    "HFSource",
    "Partitioner",
    "RowsView",
    "Source",
    "TorchSource",
    "as_source",
    "labels_of",
]
