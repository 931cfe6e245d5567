"""`FederatedDataset`: one data set plus one partitioner, loaded lazily, one partition per node.

::

    from corolla.data import IID, Dirichlet
    from corolla.data.federated import FederatedDataset

    fds = FederatedDataset("mnist", Dirichlet(num_partitions=10, alpha=0.5))   # a Hugging Face hub name
    fds = FederatedDataset("data/train.csv", IID(10), label="y")                  # a local CSV/Parquet/JSON file
    fds = FederatedDataset((X, y), IID(10))                                       # anything as_source takes

    part = fds.load_partition(3)       # node 3's rows: a datasets.Dataset (select: an indices
                                       # mapping, no copy), a RowsView for numpy, a Subset for torch
    test = fds.load_split("test")      # a whole split, e.g. for centralized evaluation

In a ``ClientApp`` a node loads its own share in one line; `load_for` checks that the node's
``num-partitions`` matches the partitioner::

    part = FederatedDataset("mnist", IID(ctx.num_partitions, seed=ctx.seed)).load_for(ctx)

Nothing is read until the first `load_partition` / `load_split`. Data named by a string (hub
name or path) is loaded once per process and its partitioning computed once per partitioner,
so building a `FederatedDataset` inside a handler that runs every round costs nothing after the
first round. In-memory data is cached on the instance.

Hub names need the ``data`` extra (``pip install 'corolla[data]'``) and, unless the data set is
already in the local Hugging Face cache, a network: without one, `DatasetUnavailable` is raised
within seconds (the hub is probed with one short HTTP request before `datasets` would retry for
about half a minute); a data set already cached is then loaded offline.
"""

from __future__ import annotations

import contextlib
import operator
import os
import threading
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .partitioners import Partitioner
from .sources import ArraySource, HFSource, RowsView, Source, TorchSource, as_source

__all__ = ["DatasetUnavailable", "FederatedDataset", "clear_cache"]

#: how long the hub reachability probe may take (DNS, connect, one HEAD request), in seconds
PROBE_TIMEOUT = 3.0

# file suffix -> datasets packaged builder (compression suffixes are stripped first)
_FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".arrow": "arrow",
}
_COMPRESSION = {".gz", ".bz2", ".xz", ".zst", ".zip", ".lz4"}


class DatasetUnavailable(ValueError):
    """A named data set could not be loaded: no network, not on the hub, or not in the cache."""


# -- process-wide caches for data named by a string --------------------------------------

_MAX_CACHED = 8
_lock = threading.RLock()
_loaded: OrderedDict[tuple, Any] = OrderedDict()  # (kind, target, split, kwargs) -> datasets.Dataset
_parts: OrderedDict[tuple, tuple[np.ndarray, ...]] = OrderedDict()  # (data key, label, partitioner) -> parts


def clear_cache() -> None:
    """Forget the data sets and partitions cached in this process (for tests and notebooks)."""
    with _lock:
        _loaded.clear()
        _parts.clear()


def _cache_get(cache: OrderedDict, key: tuple) -> Any:
    with _lock:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
    return None


def _cache_put(cache: OrderedDict, key: tuple, value: Any) -> None:
    with _lock:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > _MAX_CACHED:
            cache.popitem(last=False)


def _hashable(obj: Any) -> bool:
    try:
        hash(obj)
    except TypeError:
        return False
    return True


# -- resolving a string: local path or hub name ---------------------------------------------


def _file_format(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in _COMPRESSION:
        suffixes.pop()
    return _FORMATS.get(suffixes[-1]) if suffixes else None


def _looks_like_path(s: str) -> bool:
    p = Path(s)
    return s.startswith(("/", "./", "../", "~", "\\")) or _file_format(p) is not None or p.drive != ""


def _resolve(data: str | os.PathLike) -> tuple[str, str]:
    """``("file", path)``, ``("dir", path)``, ``("saved", path)`` or ``("hub", name)``."""
    is_path = isinstance(data, os.PathLike)
    data = os.fspath(data)
    p = Path(data).expanduser()
    if p.is_dir():
        if (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists() or (p / "state.json").exists():
            return "saved", str(p)  # written by Dataset.save_to_disk
        return "dir", str(p)
    if p.is_file():
        if _file_format(p) is None:
            raise ValueError(
                f"cannot tell the format of {str(p)!r}; name it .csv, .tsv, .parquet, .json or .jsonl "
                f"(optionally compressed, e.g. .csv.gz)"
            )
        return "file", str(p)
    if is_path or _looks_like_path(data):
        raise ValueError(f"no file or directory {data!r} (a local data set path: CSV, Parquet or JSON)")
    return "hub", data


def _import_datasets(what: str) -> Any:
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            f"loading {what} needs the Hugging Face datasets library: pip install 'corolla[data]' "
            f"(or pass an in-memory data set: (X, y) arrays, a dict of columns, a torch Dataset)"
        ) from e
    return datasets


def _hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _probe_hub(timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when the hub answers an HTTP request within `timeout` seconds, else why not.

    Any HTTP status counts as an answer; a failed DNS lookup, refused or reset connection, TLS
    failure or silence does not. (A bare TCP connect is not enough: sandboxes and proxies
    accept connections to anywhere.) DNS has no timeout of its own, so the probe runs in a
    daemon thread that is abandoned after `timeout`.
    """
    url = _hub_endpoint()
    result: list[str | None] = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
                result.append(None)
        except urllib.error.HTTPError:  # it answered
            result.append(None)
        except Exception as e:  # URLError, timeouts, TLS and socket errors
            reason = getattr(e, "reason", None) or e
            result.append(f"cannot reach {url} ({reason})")

    t = threading.Thread(target=probe, name="corolla-hub-probe", daemon=True)
    t.start()
    t.join(timeout + 1.0)
    if not result:
        return f"no answer from {url} within {timeout:g} s"
    return result[0]


def _offline_env() -> bool:
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return True
    return False


@contextlib.contextmanager
def _offline_mode(datasets: Any) -> Iterator[None]:
    """Make `datasets` and `huggingface_hub` read only the local cache, for the duration.

    Their offline flags are module constants read from the environment at import time, so
    setting ``HF_HUB_OFFLINE`` now would change nothing; the constants are set and restored.
    """
    targets: list[tuple[Any, str]] = []
    try:
        import huggingface_hub.constants as hub_constants

        targets.append((hub_constants, "HF_HUB_OFFLINE"))
    except ImportError:  # pragma: no cover - datasets depends on huggingface_hub
        pass
    cfg = getattr(datasets, "config", None)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        targets.append((cfg, name))
    saved = [(mod, name, getattr(mod, name)) for mod, name in targets if mod is not None and hasattr(mod, name)]
    with _lock:
        try:
            for mod, name, _ in saved:
                setattr(mod, name, True)
            yield
        finally:
            for mod, name, value in saved:
                setattr(mod, name, value)


def _unavailable(name: str, reason: str) -> DatasetUnavailable:
    return DatasetUnavailable(
        f"could not download {name!r} from the Hugging Face hub (no network?): {reason}; "
        f"pass a local path (CSV/Parquet/JSON) or an in-memory data set instead"
    )


def _load_hub(name: str, split: str, kwargs: Mapping[str, Any]) -> Any:
    datasets = _import_datasets(repr(name))
    offline = _offline_env()
    reason = None if offline else _probe_hub()
    if offline or reason is not None:
        # no hub: a data set already in the local cache still loads, without retries
        why = "offline mode is set (HF_HUB_OFFLINE)" if offline else reason
        try:
            with _offline_mode(datasets):
                return datasets.load_dataset(name, split=split, **kwargs)
        except OSError as e:  # ConnectionError, FileNotFoundError, hub errors: all OSError
            raise _unavailable(name, f"{why}, and it is not in the local cache ({_short(e)})") from None
    try:
        return datasets.load_dataset(name, split=split, **kwargs)
    except FileNotFoundError as e:
        if _connection_trouble(e):  # datasets wraps failed downloads in FileNotFoundError too
            raise _unavailable(name, _short(e)) from None
        # DatasetNotFoundError: the hub answered, no such data set
        raise DatasetUnavailable(
            f"no data set {name!r} on the Hugging Face hub (or it is private or gated: log in with "
            f"`hf auth login`): {_short(e)}; pass a local path (CSV/Parquet/JSON) or an in-memory "
            f"data set instead"
        ) from None
    except OSError as e:  # ConnectionError, timeouts, HTTP errors
        raise _unavailable(name, _short(e)) from None


_CONNECTION_HINTS = ("connection", "couldn't reach", "offline", "localentrynotfound", "timed out", "timeout")


def _connection_trouble(e: BaseException) -> bool:
    """Whether an error from `datasets` (or one it chains) is about the network."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, (ConnectionError, TimeoutError)) or type(e).__name__ == "LocalEntryNotFoundError":
            return True
        if any(h in str(e).lower() for h in _CONNECTION_HINTS):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def _short(e: BaseException, limit: int = 300) -> str:
    s = f"{type(e).__name__}: {e}".strip()
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _load_local(kind: str, path: str, split: str, kwargs: Mapping[str, Any]) -> Any:
    datasets = _import_datasets(repr(path))
    if kind == "saved":
        obj = datasets.load_from_disk(path)
        if isinstance(obj, Mapping):  # DatasetDict
            if split not in obj:
                raise ValueError(f"{path!r} has splits {sorted(obj)}, not {split!r}")
            return obj[split]
        if split != "train":
            raise ValueError(f"{path!r} is a single saved split; load it as split 'train', not {split!r}")
        return obj
    kwargs = dict(kwargs)
    if kind == "file":
        p = Path(path)
        if "data_files" in kwargs:
            raise ValueError("pass either a file path or data_files=..., not both")
        if split != "train":
            raise ValueError(
                f"{path!r} is one file, so it holds only the 'train' split, not {split!r}; pass a directory "
                f"with one file per split (train.csv, test.csv) or data_files={{'train': ..., 'test': ...}}"
            )
        fmt = _file_format(p)
        if any(s.lower() == ".tsv" for s in p.suffixes):
            kwargs.setdefault("delimiter", "\t")
        return datasets.load_dataset(fmt, data_files={"train": path}, split=split, **kwargs)
    return datasets.load_dataset(path, split=split, **kwargs)


def _load_named(kind: str, target: str, split: str, kwargs: Mapping[str, Any]) -> Any:
    key = (kind, target, split, repr(sorted(kwargs.items())))
    ds = _cache_get(_loaded, key)
    if ds is None:
        ds = _load_hub(target, split, kwargs) if kind == "hub" else _load_local(kind, target, split, kwargs)
        _cache_put(_loaded, key, ds)
    return ds


# -- the data set ---------------------------------------------------------------------------


def _is_dataset_dict(data: Any) -> bool:
    return type(data).__module__.startswith("datasets") and isinstance(data, Mapping)


class FederatedDataset:
    """A data set split across `partitioner.num_partitions` nodes, loaded on first use.

    `data` is a Hugging Face hub name (``"mnist"``, ``"user/name"``), a local path (a CSV,
    TSV, Parquet or JSON/JSONL file, optionally compressed; a directory of such files, one per
    split as in ``train.csv``/``test.csv``; or a folder written by ``Dataset.save_to_disk``), or
    anything `corolla.data.as_source` takes: ``(X, y)`` arrays, a dict of columns, a Hugging
    Face ``Dataset``/``DatasetDict``, a torch ``Dataset``. `split` is the split that is
    partitioned; `label` the label column (label-based partitioners read it). Further keyword
    arguments go to ``datasets.load_dataset`` (``name=`` for a configuration, ``revision=``,
    ``cache_dir=``, ``data_files=`` for a directory...).
    """

    def __init__(
        self,
        data: Any,
        partitioner: Partitioner,
        *,
        label: str = "label",
        split: str = "train",
        **load_kwargs: Any,
    ):
        if not callable(getattr(partitioner, "split", None)):
            raise TypeError(
                f"partitioner must have a split(data) method (e.g. corolla.data.IID(10)), "
                f"got {type(partitioner).__name__}"
            )
        if type(partitioner).__name__ == "VerticalSplit":
            raise TypeError(
                "VerticalSplit splits the feature columns, not the rows, so there are no row partitions to "
                "load; call partitioner.split(data) and give each party its columns"
            )
        self.partitioner = partitioner
        self.label = label
        self.split = split
        self._load_kwargs = dict(load_kwargs)
        self._named = isinstance(data, (str, os.PathLike))
        if load_kwargs and not self._named:
            raise TypeError(f"{sorted(load_kwargs)} only apply to data named by a hub name or a path")
        self._data = data
        self._resolved: tuple[str, str] | None = None
        self._sources: dict[str, Source] = {}
        self._parts: tuple[np.ndarray, ...] | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        what = repr(os.fspath(self._data)) if self._named else type(self._data).__name__
        return f"FederatedDataset({what}, {self.partitioner!r}, split={self.split!r}, label={self.label!r})"

    @property
    def num_partitions(self) -> int:
        """The partitioner's `num_partitions`; when it has none (`NaturalId` without one), the
        number of partitions the data gives (this loads the data)."""
        n = getattr(self.partitioner, "num_partitions", None)
        return len(self.partitions()) if n is None else int(n)

    # -- loading ----------------------------------------------------------------------------

    def _source(self, split: str) -> Source:
        with self._lock:
            src = self._sources.get(split)
            if src is None:
                src = self._make_source(split)
                self._sources[split] = src
            return src

    def _make_source(self, split: str) -> Source:
        if self._named:
            if self._resolved is None:
                self._resolved = _resolve(self._data)
            kind, target = self._resolved
            return HFSource(_load_named(kind, target, split, self._load_kwargs), label=self.label)
        data = self._data
        if _is_dataset_dict(data):
            if split not in data:
                raise ValueError(f"the DatasetDict has splits {sorted(data)}, not {split!r}")
            return HFSource(data[split], label=self.label)
        if split != self.split:
            raise ValueError(
                f"in-memory data has one split ({self.split!r}), not {split!r}; pass a DatasetDict, "
                f"a hub name or a directory with one file per split to load other splits"
            )
        return as_source(data, label=self.label)

    def _key(self) -> tuple | None:
        """The process-cache key of the partitioning, or None if it cannot be cached process-wide."""
        if not self._named or not _hashable(self.partitioner):
            return None
        kind, target = self._resolved or _resolve(self._data)
        return (kind, target, self.split, repr(sorted(self._load_kwargs.items())), self.label, self.partitioner)

    def partitions(self) -> tuple[np.ndarray, ...]:
        """Per partition: the sorted row indices into the partitioned split (computed once)."""
        with self._lock:
            if self._parts is not None:
                return self._parts
            src = self._source(self.split)  # loads (or fails) before anything is cached
            key = self._key()
            parts = _cache_get(_parts, key) if key is not None else None
            if parts is None:
                parts = tuple(np.asarray(p) for p in self.partitioner.split(src))
                declared = getattr(self.partitioner, "num_partitions", None)
                if declared is not None and len(parts) != declared:
                    raise ValueError(
                        f"{self.partitioner!r} returned {len(parts)} partitions but has num_partitions={declared}"
                    )
                for p in parts:
                    p.flags.writeable = False  # shared between callers
                if key is not None:
                    _cache_put(_parts, key, parts)
            self._parts = parts
            return parts

    def partition_sizes(self) -> list[int]:
        """Number of rows in each partition."""
        return [len(p) for p in self.partitions()]

    def _check_id(self, partition_id: int) -> int:
        n = self.num_partitions
        try:
            pid = None if isinstance(partition_id, bool) else operator.index(partition_id)
        except TypeError:
            pid = None
        if pid is None or not 0 <= pid < n:
            raise ValueError(f"partition_id must be an integer in 0..{n - 1} ({n} partitions), got {partition_id!r}")
        return pid

    def load_partition(self, partition_id: int) -> Any:
        """Partition `partition_id`'s rows, as a view in the data's own type (no copy).

        A ``datasets.Dataset`` (via ``select``) for hub names, paths and Hugging Face data; a
        `RowsView` for numpy columns (``.arrays()`` gives ``X, y``); a ``torch.utils.data.Subset``
        for a torch ``Dataset``.
        """
        pid = self._check_id(partition_id)  # before loading: a bad id costs nothing
        return self._source(self.split).rows(self.partitions()[pid])

    def load_split(self, split: str | None = None) -> Any:
        """A whole split, unpartitioned (default: the partitioned one), e.g. the test split."""
        src = self._source(self.split if split is None else split)
        if isinstance(src, HFSource):
            return src.ds
        if isinstance(src, TorchSource):
            return src.ds
        if isinstance(src, ArraySource):
            return RowsView(src._cols, np.arange(len(src)))
        return src.rows(np.arange(len(src)))

    def label_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """``(counts, classes)``: examples of each class per partition (see `corolla.data.inspection`)."""
        from .inspection import label_counts

        return label_counts(self._source(self.split), self.partitions(), label=self.label)

    # -- nodes ------------------------------------------------------------------------------

    def check_federation(self, ctx: Any) -> None:
        """Raise `ValueError` unless the node's ``num-partitions`` equals the partitioner's.

        `ctx` is the handler's `corolla.Context`: in simulation its node config holds
        ``partition-id`` and ``num-partitions``; a deployed node gets them from
        ``--node-config partition-id=0,num-partitions=3``.
        """
        cfg = getattr(ctx, "node_config", None) or {}
        missing = [k for k in ("partition-id", "num-partitions") if k not in cfg]
        if missing:
            raise ValueError(
                f"node {getattr(ctx, 'node_id', '?')} has no {' or '.join(repr(k) for k in missing)} in its "
                f"node config, so it does not know its share of the data; simulations set both, a deployed "
                f"node needs --node-config partition-id=I,num-partitions=N"
            )
        if int(ctx.num_partitions) != self.num_partitions:
            raise ValueError(
                f"this node's config says num-partitions={ctx.num_partitions}, but the partitioner splits the "
                f"data into {self.num_partitions} partitions ({self.partitioner!r}); build it with "
                f"num_partitions=ctx.num_partitions so every node cuts the same split"
            )

    def load_for(self, ctx: Any) -> Any:
        """This node's partition: `check_federation(ctx)`, then ``load_partition(ctx.partition_id)``."""
        self.check_federation(ctx)
        return self.load_partition(ctx.partition_id)
