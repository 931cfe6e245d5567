"""Store: runs, round records, metrics, events and checkpoints in one SQLite file per store.

SQLite in WAL mode lets the CLI read a store while a run writes it; every round is
committed in one transaction, after its checkpoint file is already durable, so a
killed run leaves a store whose latest checkpoint row always points at a complete file.
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoints import (
    checkpoint_name,
    read_checkpoint,
    remove_unreferenced,
    write_checkpoint,
)
from .errors import StoreError
from .schema import ensure_schema

STATUSES = frozenset({"running", "completed", "failed", "interrupted"})
KEEP_CHECKPOINTS = 2
_UPDATABLE = frozenset({"project", "seed", "num_rounds", "num_nodes", "backend", "config"})
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # also a directory name: no '/' or '..'


@dataclass(frozen=True)
class RunInfo:
    """One row of `runs`, plus how far the run got."""

    run_id: str
    project: str
    status: str
    seed: int
    num_rounds: int
    num_nodes: int
    backend: str
    config: dict
    created: float
    updated: float
    error: str | None
    rounds_completed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_RUN_COLUMNS = (
    "run_id, project, status, seed, num_rounds, num_nodes, backend, config, created, updated, error, "
    "COALESCE((SELECT MAX(r.round) FROM rounds r WHERE r.run_id = runs.run_id), 0)"
)


def _run_info(row: tuple) -> RunInfo:
    *head, config, created, updated, error, done = row
    return RunInfo(*head, json.loads(config) if config else {}, created, updated, error, done)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, separators=(",", ":"))


def _metric_rows(record: dict) -> list[tuple[str, str, float]]:
    """Numeric metrics only: the table exists for plotting and querying numbers."""
    rows = []
    for grp, values in (record.get("metrics") or {}).items():
        for name, v in (values or {}).items():
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
                rows.append((str(grp), str(name), float(v)))
    return rows


def new_run_id() -> str:
    """Sortable by creation time, readable, and unique without any seeded RNG."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + os.urandom(2).hex()


class Store:
    """A directory holding corolla.db and checkpoints/<run_id>/round-NNNNN.safetensors."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "corolla.db"
        self._lock = threading.Lock()  # one connection shared by threads: use it one at a time
        self._commit_lock = threading.Lock()  # a commit spans file writes and transactions
        try:
            conn = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open store {self.root}: {e}") from e
        try:
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            ensure_schema(conn, str(self.root))
        except sqlite3.DatabaseError as e:
            conn.close()
            raise StoreError(f"cannot open store {self.root}: {self.path} is not a usable database ({e})") from e
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn

    # -- plumbing -------------------------------------------------------------
    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise StoreError(f"store {self.root} is closed")
            yield self._conn

    @contextmanager
    def _tx(self, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction; `durable` syncs it to disk before returning (checkpoint rows)."""
        with self._read() as conn:
            if durable:
                conn.execute("PRAGMA synchronous = FULL")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            finally:
                if durable:
                    conn.execute("PRAGMA synchronous = NORMAL")

    def _resolve(self, conn: sqlite3.Connection, run_id: str) -> str:
        """An exact run id, or a unique prefix of one."""
        if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
            return run_id
        matches = [
            r[0]
            for r in conn.execute(
                "SELECT run_id FROM runs WHERE ? != '' AND substr(run_id, 1, length(?)) = ? ORDER BY run_id",
                (run_id, run_id, run_id),
            )
        ]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise StoreError(
                f"run id {run_id!r} is ambiguous in store {self.root}: it matches "
                f"{', '.join(matches)}; give more characters"
            )
        raise StoreError(f"no run {run_id!r} in store {self.root}; `corolla runs --store {self.root}` lists the runs")

    def resolve(self, run_id: str) -> str:
        """The full run id for an id or unique prefix (StoreError if none or several)."""
        with self._read() as conn:
            return self._resolve(conn, run_id)

    # -- runs -------------------------------------------------------------------
    def create_run(
        self,
        *,
        project: str,
        seed: int,
        num_rounds: int,
        num_nodes: int,
        backend: str,
        config: dict,
        run_id: str | None = None,
    ) -> str:
        """Register a new run (status 'running') and return its id."""
        if run_id is not None and not _RUN_ID.fullmatch(run_id):
            raise ValueError(
                f"run id {run_id!r} is not allowed: use letters, digits, '.', '_' and '-' "
                "(at most 128 characters, starting with a letter or digit)"
            )
        config_json = _dumps(config)
        now = time.time()
        with self._tx() as conn:
            if run_id is None:
                run_id = new_run_id()
                while conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
                    run_id = new_run_id()
            elif conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
                raise StoreError(f"run {run_id!r} already exists in store {self.root}")
            conn.execute(
                "INSERT INTO runs (run_id, project, status, seed, num_rounds, num_nodes, backend, "
                "config, created, updated, error) VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, NULL)",
                (run_id, project, int(seed), int(num_rounds), int(num_nodes), backend, config_json, now, now),
            )
        return run_id

    def get_run(self, run_id: str) -> RunInfo:
        """A run by id or unique id prefix."""
        with self._read() as conn:
            rid = self._resolve(conn, run_id)
            return _run_info(conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (rid,)).fetchone())

    def list_runs(self) -> list[RunInfo]:
        """All runs, newest first."""
        with self._read() as conn:
            rows = conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY created DESC, run_id DESC").fetchall()
        return [_run_info(r) for r in rows]

    def set_status(self, run_id: str, status: str, error: str | None = None) -> None:
        """Record how a run ended (or that it runs again); `error` is cleared unless given."""
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {', '.join(sorted(STATUSES))}")
        with self._tx() as conn:
            rid = self._resolve(conn, run_id)
            conn.execute(
                "UPDATE runs SET status = ?, error = ?, updated = ? WHERE run_id = ?",
                (status, error, time.time(), rid),
            )

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Change run settings a resume may extend (num_rounds, backend, config, ...)."""
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise TypeError(f"cannot update {', '.join(sorted(unknown))}; updatable: {', '.join(sorted(_UPDATABLE))}")
        if not fields:
            return
        values = {k: (_dumps(v) if k == "config" else v) for k, v in fields.items()}
        sets = ", ".join(f"{k} = ?" for k in values)
        with self._tx() as conn:
            rid = self._resolve(conn, run_id)
            conn.execute(
                f"UPDATE runs SET {sets}, updated = ? WHERE run_id = ?",
                (*values.values(), time.time(), rid),
            )

    # -- events -----------------------------------------------------------------
    def add_event(self, run_id: str, kind: str, text: str, round: int | None = None) -> int:
        """Append a line to the run's log (node failures, resumes, warnings); returns its id."""
        with self._tx() as conn:
            rid = self._resolve(conn, run_id)
            cur = conn.execute(
                "INSERT INTO events (run_id, round, time, kind, text) VALUES (?, ?, ?, ?, ?)",
                (rid, round, time.time(), kind, text),
            )
            return int(cur.lastrowid)

    def events(self, run_id: str) -> list[dict[str, Any]]:
        """The run's events in the order they were added."""
        with self._read() as conn:
            rid = self._resolve(conn, run_id)
            rows = conn.execute(
                "SELECT id, round, time, kind, text FROM events WHERE run_id = ? ORDER BY id", (rid,)
            ).fetchall()
        return [dict(zip(("id", "round", "time", "kind", "text"), r)) for r in rows]

    # -- rounds and checkpoints ---------------------------------------------------
    def commit_round(self, run_id: str, record: dict, checkpoint: dict | None = None) -> None:
        """Persist one finished round, and optionally the state to resume from after it.

        The checkpoint file is made durable first, then the round, its metrics and the
        checkpoint row go in one transaction; files older than the latest two
        checkpoints are deleted only after their rows are gone.
        """
        rnd = record.get("round")
        if isinstance(rnd, bool) or not isinstance(rnd, (int, np.integer)):
            raise ValueError(f"record needs an int 'round', got {rnd!r}")
        rnd = int(rnd)
        record_json = _dumps(record)  # fail on a bad record before touching any file
        metric_rows = _metric_rows(record)
        seconds = record.get("seconds")
        with self._commit_lock:
            rel = None
            if checkpoint is not None:
                with self._tx(durable=True) as conn:
                    run_id = self._resolve(conn, run_id)
                    # the file about to be replaced must not be what a row points at
                    conn.execute("DELETE FROM checkpoints WHERE run_id = ? AND round = ?", (run_id, rnd))
                rel = Path("checkpoints") / run_id / checkpoint_name(rnd)
                sha = write_checkpoint(self.root / rel, checkpoint)
            try:
                with self._tx(durable=checkpoint is not None) as conn:
                    run_id = self._resolve(conn, run_id)
                    now = time.time()
                    conn.execute(
                        "INSERT OR REPLACE INTO rounds (run_id, round, record, seconds) VALUES (?, ?, ?, ?)",
                        (run_id, rnd, record_json, seconds),
                    )
                    conn.execute("DELETE FROM metrics WHERE run_id = ? AND round = ?", (run_id, rnd))
                    conn.executemany(
                        "INSERT INTO metrics (run_id, round, grp, name, value) VALUES (?, ?, ?, ?, ?)",
                        [(run_id, rnd, g, n, v) for g, n, v in metric_rows],
                    )
                    if rel is not None:
                        conn.execute(
                            "INSERT INTO checkpoints (run_id, round, path, sha256, created) VALUES (?, ?, ?, ?, ?)",
                            (run_id, rnd, rel.as_posix(), sha, now),
                        )
                        conn.execute(
                            "DELETE FROM checkpoints WHERE run_id = ? AND round NOT IN "
                            "(SELECT round FROM checkpoints WHERE run_id = ? ORDER BY round DESC LIMIT ?)",
                            (run_id, run_id, KEEP_CHECKPOINTS),
                        )
                    conn.execute("UPDATE runs SET updated = ? WHERE run_id = ?", (now, run_id))
            except BaseException:
                if rel is not None:
                    (self.root / rel).unlink(missing_ok=True)  # no row points at it
                raise
            if rel is not None:
                self._prune_files(run_id)

    def _prune_files(self, run_id: str) -> None:
        with self._read() as conn:
            keep = {Path(p).name for (p,) in conn.execute("SELECT path FROM checkpoints WHERE run_id = ?", (run_id,))}
        remove_unreferenced(self.root / "checkpoints" / run_id, keep)

    def rounds(self, run_id: str) -> list[dict[str, Any]]:
        """The run's round records (RoundRecord.to_dict() form), in round order."""
        with self._read() as conn:
            rid = self._resolve(conn, run_id)
            rows = conn.execute("SELECT record FROM rounds WHERE run_id = ? ORDER BY round", (rid,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def metrics(self, run_id: str) -> list[tuple[int, str, str, float]]:
        """(round, group, name, value) for every numeric metric, in round order."""
        with self._read() as conn:
            rid = self._resolve(conn, run_id)
            rows = conn.execute(
                "SELECT round, grp, name, value FROM metrics WHERE run_id = ? ORDER BY round, rowid", (rid,)
            ).fetchall()
        # SQLite stores NaN as NULL; NULL only ever comes from a NaN
        return [(r, g, n, math.nan if v is None else v) for r, g, n, v in rows]

    def latest_checkpoint(self, run_id: str) -> tuple[int, dict] | None:
        """(round, state) of the newest checkpoint, verified against its recorded sha256."""
        with self._read() as conn:
            rid = self._resolve(conn, run_id)
            row = conn.execute(
                "SELECT round, path, sha256 FROM checkpoints WHERE run_id = ? ORDER BY round DESC LIMIT 1", (rid,)
            ).fetchone()
        if row is None:
            return None
        rnd, rel, sha = row
        return rnd, read_checkpoint(self.root / rel, sha)

    def delete_rounds_after(self, run_id: str, round: int) -> int:
        """Forget rounds (and their events) after `round`, the checkpoint a resume starts from."""
        with self._commit_lock:
            with self._tx(durable=True) as conn:
                rid = self._resolve(conn, run_id)
                n = conn.execute("DELETE FROM rounds WHERE run_id = ? AND round > ?", (rid, round)).rowcount
                conn.execute("DELETE FROM metrics WHERE run_id = ? AND round > ?", (rid, round))
                conn.execute("DELETE FROM checkpoints WHERE run_id = ? AND round > ?", (rid, round))
                # events of rounds being redone would otherwise appear twice
                conn.execute("DELETE FROM events WHERE run_id = ? AND round > ?", (rid, round))
                conn.execute("UPDATE runs SET updated = ? WHERE run_id = ?", (time.time(), rid))
            self._prune_files(rid)
        return n
