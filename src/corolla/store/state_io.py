"""Nested state <-> (named arrays, JSON meta), so a checkpoint is one safetensors file.

Arrays go to safetensors tensors; everything else (scalars, structure, dict key types,
real names) goes to a JSON meta tree, stored in the safetensors header metadata. Tensor
keys are "<index>:<path>": readable, and unique whatever the names contain, because the
meta tree, not the key, says where each tensor belongs.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from safetensors.numpy import load as _st_load
from safetensors.numpy import save_file as _st_save_file

from ..records import ALLOWED_DTYPES, Arrays
from .errors import StoreError

META_KEY = "corolla_state"
FORMAT = "corolla-state"
VERSION = 1

# complex is stored as a real view with a trailing axis of 2: every safetensors version reads it
_COMPLEX_AS = {np.dtype("complex64").str: np.float32, np.dtype("complex128").str: np.float64}


def _hint(path: str, kind: str) -> TypeError:
    return TypeError(
        f"state value at {path or '<root>'!r} has type {kind}; keep state as arrays, numbers, strings, lists and dicts"
    )


class _Flattener:
    def __init__(self) -> None:
        self.tensors: dict[str, np.ndarray] = {}

    def _tensor(self, path: str, arr: np.ndarray) -> dict[str, Any]:
        if arr.dtype.str not in ALLOWED_DTYPES:
            raise _hint(path, f"numpy array of dtype {arr.dtype}")
        key = f"{len(self.tensors)}:{path}"
        data = np.ascontiguousarray(arr)  # safetensors copies raw memory: must be C-contiguous
        if arr.dtype.str in _COMPLEX_AS:
            data = data.reshape(-1).view(_COMPLEX_AS[arr.dtype.str]).reshape(-1, 2)
        self.tensors[key] = data
        return {"k": key, "dtype": arr.dtype.str, "shape": list(arr.shape)}

    def node(self, value: Any, path: str) -> dict[str, Any]:
        join = (lambda part: f"{path}/{part}") if path else str
        if isinstance(value, np.ndarray):
            return {"t": "array", **self._tensor(path, value)}
        if isinstance(value, np.generic):  # before float/bool: np.float64 subclasses float
            return {"t": "npscalar", **self._tensor(path, np.asarray(value))}
        if value is None:
            return {"t": "none"}
        if isinstance(value, bool):
            return {"t": "bool", "v": value}
        if isinstance(value, int):
            return {"t": "int", "v": int(value)}
        if isinstance(value, float):
            return {"t": "float", "v": float(value).hex()}  # exact, and nan/inf stay valid JSON
        if isinstance(value, str):
            return {"t": "str", "v": str(value)}
        if isinstance(value, Arrays):
            return {"t": "Arrays", "items": [[k, self._tensor(join(k), v)] for k, v in value.items()]}
        if isinstance(value, dict):
            items = []
            for k, v in value.items():
                if isinstance(k, bool) or not isinstance(k, (str, int)):
                    raise TypeError(
                        f"state dict at {path or '<root>'!r} has key {k!r} of type "
                        f"{type(k).__name__}; keys must be str or int"
                    )
                items.append(["s" if isinstance(k, str) else "i", k, self.node(v, join(k))])
            return {"t": "dict", "items": items}
        if isinstance(value, (list, tuple)):
            kind = "tuple" if isinstance(value, tuple) else "list"
            return {"t": kind, "items": [self.node(v, join(i)) for i, v in enumerate(value)]}
        raise _hint(path, type(value).__name__)


def flatten_state(state: dict) -> tuple[dict[str, np.ndarray], dict]:
    """Split a nested state dict into safetensors-ready arrays and a JSON-serialisable meta tree."""
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    f = _Flattener()
    root = f.node(state, "")
    return f.tensors, {"format": FORMAT, "version": VERSION, "root": root}


def _array(tensors: dict[str, np.ndarray], spec: dict[str, Any]) -> np.ndarray:
    try:
        data = tensors[spec["k"]]
    except KeyError:
        raise StoreError(f"state is missing tensor {spec['k']!r} named in its meta") from None
    dtype = np.dtype(spec["dtype"])
    if dtype.str in _COMPLEX_AS:
        data = np.ascontiguousarray(data).reshape(-1).view(dtype)
    if data.dtype != dtype or data.size != int(np.prod(spec["shape"], dtype=np.int64)):
        raise StoreError(
            f"tensor {spec['k']!r} is {data.dtype}{list(data.shape)}, "
            f"meta says {dtype}{spec['shape']}; the checkpoint is corrupt"
        )
    return data.reshape(spec["shape"])


def _unnode(tensors: dict[str, np.ndarray], n: dict[str, Any]) -> Any:
    t = n["t"]
    if t == "array":
        return _array(tensors, n)
    if t == "npscalar":
        return _array(tensors, n)[()]
    if t == "none":
        return None
    if t in ("bool", "int", "str"):
        return n["v"]
    if t == "float":
        return float.fromhex(n["v"])
    if t == "Arrays":
        return Arrays((k, _array(tensors, spec)) for k, spec in n["items"])
    if t == "dict":
        return {(k if ks == "s" else int(k)): _unnode(tensors, v) for ks, k, v in n["items"]}
    if t == "list":
        return [_unnode(tensors, v) for v in n["items"]]
    if t == "tuple":
        return tuple(_unnode(tensors, v) for v in n["items"])
    raise StoreError(f"unknown state node type {t!r}; was it written by a newer corolla?")


def unflatten_state(tensors: dict[str, np.ndarray], meta: dict) -> dict:
    """Rebuild the exact state flatten_state split (same types, dtypes, key types, order)."""
    if meta.get("format") != FORMAT:
        raise StoreError(f"not a corolla state (format {meta.get('format')!r})")
    if meta.get("version", 0) > VERSION:
        raise StoreError(
            f"state format version {meta['version']} is newer than this corolla reads ({VERSION}); upgrade corolla"
        )
    return _unnode(tensors, meta["root"])


def save_state_file(path: str, state: dict) -> None:
    """Write one safetensors file holding the arrays and, in its header metadata, the meta tree."""
    tensors, meta = flatten_state(state)
    _st_save_file(tensors, path, metadata={META_KEY: json.dumps(meta, separators=(",", ":"))})


def state_from_bytes(data: bytes) -> dict:
    """Read back what save_state_file wrote (from bytes, so the caller can hash them first)."""
    try:
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n])
        meta = json.loads(header["__metadata__"][META_KEY])
        return unflatten_state(_st_load(data), meta)
    except StoreError:
        raise
    except Exception as e:  # safetensors and json raise their own types on a damaged file
        raise StoreError(f"cannot read checkpoint: {type(e).__name__}: {e}") from e
