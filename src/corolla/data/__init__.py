"""Data helpers for simulations: partitioners and small bundled data sets.

Partitioners return index arrays, one per node, so any data set can be split without copies::

    from corolla.data import dirichlet
    parts = dirichlet(y, num_partitions=20, alpha=0.5, seed=0)
    X_node, y_node = X[parts[node]], y[parts[node]]

Data set loaders (e.g. `corolla.data.digits`) import their ML library only when used.
"""

from .partitioners import dirichlet, iid

__all__ = ["dirichlet", "iid"]
