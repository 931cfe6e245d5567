"""The SQLite schema and its version check, so an old corolla never misreads a newer store."""

from __future__ import annotations

import sqlite3

from .errors import StoreError

SCHEMA_VERSION = 1

DDL = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    status TEXT NOT NULL,
    seed INTEGER,
    num_rounds INTEGER,
    num_nodes INTEGER,
    backend TEXT,
    config JSON,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    error TEXT
);
CREATE TABLE IF NOT EXISTS rounds (
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    record JSON NOT NULL,
    seconds REAL,
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    grp TEXT NOT NULL,
    name TEXT NOT NULL,
    value REAL
);
CREATE INDEX IF NOT EXISTS metrics_run ON metrics (run_id);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    round INTEGER,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_run ON events (run_id);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (run_id, round)
);
"""


def ensure_schema(conn: sqlite3.Connection, where: str) -> None:
    """Create the tables in a new store; refuse a store written by a newer schema."""
    conn.execute("BEGIN IMMEDIATE")  # two processes opening a new store must not both create it
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        version = row[0]
        if version is not None and version > SCHEMA_VERSION:
            raise StoreError(
                f"store {where} has schema version {version}, but this corolla understands "
                f"up to version {SCHEMA_VERSION}; upgrade corolla to open it"
            )
        for stmt in DDL.split(";"):
            if stmt.strip():
                conn.execute(stmt)
        if version is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
