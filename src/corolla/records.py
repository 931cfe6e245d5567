"""The data model's leaves: named arrays, metrics and config.

`Arrays` is an ordered mapping of name -> numpy array. Adapters convert to and from the
objects each ML framework uses, sharing memory where the framework allows, so the
framework boundary costs no copy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any, Union

import numpy as np

Scalar = Union[int, float, str, bool]
ConfigValue = Union[Scalar, list, tuple]
Metrics = dict[str, float]
Config = dict[str, ConfigValue]

#: dtypes that may cross a process or network boundary (decoders refuse anything else)
ALLOWED_DTYPES = frozenset(
    np.dtype(d).str
    for d in (
        "float16",
        "float32",
        "float64",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "bool",
        "complex64",
        "complex128",
    )
)


class Arrays(MutableMapping[str, np.ndarray]):
    """Ordered name -> numpy array. Values are kept as given (no copy)."""

    __slots__ = ("_d",)

    def __init__(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None):
        self._d: dict[str, np.ndarray] = {}
        if items is None:
            return
        pairs = items.items() if isinstance(items, Mapping) else items
        for k, v in pairs:
            self[k] = v

    # -- mapping protocol ---------------------------------------------------
    def __getitem__(self, key: str) -> np.ndarray:
        return self._d[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise TypeError(f"Arrays keys must be str, got {type(key).__name__}")
        arr = np.asarray(value)
        if arr.dtype.str not in ALLOWED_DTYPES:
            raise TypeError(
                f"array {key!r} has dtype {arr.dtype} which cannot be sent; "
                f"convert it to one of the numeric dtypes (e.g. float32)"
            )
        self._d[key] = arr

    def __delitem__(self, key: str) -> None:
        del self._d[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}: {v.dtype}{list(v.shape)}" for k, v in self._d.items())
        return f"Arrays({{{inner}}})"

    def __eq__(self, other: object) -> bool:  # exact equality, for tests
        if not isinstance(other, Mapping):
            return NotImplemented
        return list(self.keys()) == list(other.keys()) and all(
            np.array_equal(self[k], other[k]) and self[k].dtype == np.asarray(other[k]).dtype for k in self
        )

    # -- properties -----------------------------------------------------------
    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._d.values())

    @property
    def num_params(self) -> int:
        return sum(a.size for a in self._d.values())

    def spec(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """name -> (dtype string, shape): what a reply must match."""
        return {k: (v.dtype.str, tuple(v.shape)) for k, v in self._d.items()}

    def copy(self) -> "Arrays":
        return Arrays((k, v.copy()) for k, v in self._d.items())

    def sha256(self) -> str:
        """Hash of names, dtypes, shapes and bytes in sorted-name order (canonical)."""
        h = hashlib.sha256()
        for k in sorted(self._d):
            a = np.ascontiguousarray(self._d[k])
            h.update(k.encode())
            h.update(a.dtype.str.encode())
            h.update(repr(tuple(a.shape)).encode())
            h.update(memoryview(a).cast("B"))
        return h.hexdigest()

    # -- adapters -------------------------------------------------------------
    @classmethod
    def from_numpy(cls, arrays: Sequence[np.ndarray], names: Sequence[str] | None = None) -> "Arrays":
        """From a list of arrays (names default to '0', '1', ...)."""
        names = list(names) if names is not None else [str(i) for i in range(len(arrays))]
        if len(names) != len(arrays):
            raise ValueError(f"{len(names)} names for {len(arrays)} arrays")
        return cls(zip(names, arrays))

    def to_numpy(self) -> list[np.ndarray]:
        return list(self._d.values())

    @classmethod
    def from_torch(cls, state_dict: Mapping[str, Any]) -> "Arrays":
        """From a torch ``state_dict``. CPU tensors share memory with the result."""
        out = cls()
        for k, t in state_dict.items():
            t = t.detach()
            if t.device.type != "cpu":
                t = t.cpu()
            out[k] = t.numpy()
        return out

    def to_torch(self) -> "dict[str, Any]":
        """To a torch ``state_dict`` (an ordered dict of tensors sharing memory with the arrays)."""
        from collections import OrderedDict

        import torch

        out = OrderedDict()
        for k, v in self._d.items():
            if not v.flags.writeable:
                v = v.copy()  # torch refuses read-only buffers
            out[k] = torch.from_numpy(np.ascontiguousarray(v))
        return out

    @classmethod
    def from_keras(cls, model_or_weights: Any) -> "Arrays":
        """From a Keras model (its weights, named by variable path) or a list of weights."""
        if hasattr(model_or_weights, "weights") and hasattr(model_or_weights, "get_weights"):
            names = [getattr(w, "path", None) or w.name for w in model_or_weights.weights]
            return cls.from_numpy(model_or_weights.get_weights(), names)
        return cls.from_numpy([np.asarray(w) for w in model_or_weights])

    def to_keras(self, model: Any = None) -> list[np.ndarray]:
        """To the list Keras' ``set_weights`` takes; given a model, sets them on it too."""
        weights = self.to_numpy()
        if model is not None:
            model.set_weights(weights)
        return weights


def check_metrics(metrics: Mapping[str, Any], where: str) -> Metrics:
    """Metrics are str -> finite-or-not real numbers; anything else is a clear error."""
    out: Metrics = {}
    for k, v in metrics.items():
        if not isinstance(k, str):
            raise TypeError(f"{where}: metric names must be str, got {k!r}")
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"{where}: metric {k!r} must be a number, got {type(v).__name__}")
        out[k] = v.item() if isinstance(v, np.generic) else v
    return out
