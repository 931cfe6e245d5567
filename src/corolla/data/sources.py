"""One view of any data set for partitioners: rows, named columns, features, no-copy row views.

`as_source` adapts what users have:

* ``(X, y)`` numpy arrays (columns ``"x"`` and ``"label"``), or a dict of equal-length columns;
* a Hugging Face ``datasets.Dataset`` (columns by name; rows via ``select``: an indices mapping,
  no copy of the Arrow data);
* a torch ``Dataset`` (labels from ``.targets`` when present, else read item by item; rows via
  ``torch.utils.data.Subset``).

Partitioners read only what they need (``len``, the label column, a natural-id column, the
feature matrix), so splitting a large data set costs one column, not the data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Source(Protocol):
    label: str  # name of the label column

    def __len__(self) -> int: ...

    def column(self, name: str) -> np.ndarray:
        """One column as a 1-D array (a view where the backend allows)."""
        ...

    def features(self) -> np.ndarray:
        """The feature matrix, shape (rows, features), for partitioners that split by features."""
        ...

    def rows(self, indices: np.ndarray) -> Any:
        """The rows at `indices`, as a lazy view in the backend's own type."""
        ...


def labels_of(source: Source) -> np.ndarray:
    return source.column(source.label)


@dataclass(frozen=True)
class RowsView:
    """Rows of numpy columns selected by index; nothing is copied until `arrays()` or `[name]`."""

    columns: Mapping[str, np.ndarray]
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name][self.indices]

    def arrays(self) -> tuple[np.ndarray, ...]:
        """All columns for these rows, in column order (``X, y`` for an ``(X, y)`` source)."""
        return tuple(c[self.indices] for c in self.columns.values())


class ArraySource:
    """Numpy columns of equal length; ``(X, y)`` becomes columns ``x`` and ``label``."""

    def __init__(self, columns: Mapping[str, Any], label: str = "label", features: str | Sequence[str] = "x"):
        cols = {k: np.asarray(v) for k, v in columns.items()}
        lengths = {k: len(v) for k, v in cols.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"all columns must have the same number of rows, got {lengths}")
        self._cols = cols
        self.label = label
        self._features = [features] if isinstance(features, str) else list(features)

    def __len__(self) -> int:
        return len(next(iter(self._cols.values()))) if self._cols else 0

    def column(self, name: str) -> np.ndarray:
        if name not in self._cols:
            raise KeyError(f"no column {name!r}; the data has columns {sorted(self._cols)}")
        return self._cols[name]

    def features(self) -> np.ndarray:
        parts = [self.column(f) for f in self._features]
        mats = [p.reshape(len(p), -1) for p in parts]
        return mats[0] if len(mats) == 1 else np.hstack(mats)

    def rows(self, indices: np.ndarray) -> RowsView:
        return RowsView(self._cols, np.asarray(indices))


class HFSource:
    """A Hugging Face ``datasets.Dataset``."""

    def __init__(self, ds: Any, label: str = "label", features: str | Sequence[str] | None = None):
        self.ds = ds
        self.label = label
        self._features = features

    def __len__(self) -> int:
        return len(self.ds)

    def column(self, name: str) -> np.ndarray:
        if name not in self.ds.column_names:
            raise KeyError(f"no column {name!r}; the data set has columns {self.ds.column_names}")
        return np.asarray(self.ds.with_format("numpy")[name])

    def features(self) -> np.ndarray:
        names = self._features or [c for c in self.ds.column_names if c != self.label]
        names = [names] if isinstance(names, str) else list(names)
        mats = [self.column(n).reshape(len(self), -1) for n in names]
        return mats[0] if len(mats) == 1 else np.hstack(mats)

    def rows(self, indices: np.ndarray) -> Any:
        return self.ds.select(np.asarray(indices))


class TorchSource:
    """A torch ``Dataset`` of ``(x, y)`` items."""

    def __init__(self, ds: Any, label: str = "label"):
        self.ds = ds
        self.label = label

    def __len__(self) -> int:
        return len(self.ds)

    def column(self, name: str) -> np.ndarray:
        if name == self.label:
            targets = getattr(self.ds, "targets", None)
            if targets is not None:
                return np.asarray(targets)
            return np.asarray([int(self.ds[i][1]) for i in range(len(self.ds))])
        if name == "x":
            return self.features()
        raise KeyError(f"a torch Dataset has columns 'x' and {self.label!r}, not {name!r}")

    def features(self) -> np.ndarray:
        return np.stack([np.asarray(self.ds[i][0]).reshape(-1) for i in range(len(self.ds))])

    def rows(self, indices: np.ndarray) -> Any:
        from torch.utils.data import Subset

        return Subset(self.ds, np.asarray(indices).tolist())


def as_source(data: Any, label: str = "label") -> Source:
    """Adapt ``(X, y)``, a dict of columns, a Hugging Face or a torch data set."""
    if isinstance(data, (ArraySource, HFSource, TorchSource)):
        return data
    if isinstance(data, tuple) and len(data) == 2:
        return ArraySource({"x": data[0], "label": data[1]})
    if isinstance(data, Mapping):
        return ArraySource(data, label=label)
    if isinstance(data, np.ndarray) and data.ndim == 1:
        return ArraySource({"label": data})  # labels alone are enough for label-based splits
    mod = type(data).__module__
    if mod.startswith("datasets"):
        return HFSource(data, label=label)
    if mod.startswith("torch") or hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return TorchSource(data, label=label)
    raise TypeError(
        f"cannot partition a {type(data).__name__}; pass (X, y) arrays, a dict of columns, "
        f"a Hugging Face Dataset or a torch Dataset"
    )
