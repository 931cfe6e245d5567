"""corolla.store: exact state round trips, run bookkeeping, atomic checkpoints, crash safety."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from corolla.records import Arrays
from corolla.store import RunInfo, Store, StoreError, flatten_state, unflatten_state
from corolla.store.state_io import save_state_file, state_from_bytes


# -- helpers ------------------------------------------------------------------------
def assert_same(a, b, path="<root>"):
    """Same types all the way down, same dtypes and shapes, bitwise-equal array bytes."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes(), path
    elif isinstance(a, (dict, Arrays)):
        assert list(a.keys()) == list(b.keys()), path
        assert [type(k) for k in a] == [type(k) for k in b], path
        for k in a:
            assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}/{i}")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), path
    elif isinstance(a, float):
        assert a == b and math.copysign(1, a) == math.copysign(1, b), path
    else:
        assert a == b, path


def rich_state() -> dict:
    rng = np.random.default_rng(0)
    return {
        "params": Arrays(
            {
                "z.last": rng.normal(size=(3, 4)).astype(np.float32),
                "a/first": np.arange(5, dtype=np.int64),  # '/' inside a name
                "conv:0": np.ones((2, 0, 3), np.float64),  # empty
                "scale": np.array(-1.25, np.float64),  # 0-d
                "keep": np.array([[True], [False]]),
            }
        ),
        "nested": {"global": Arrays({"w": np.float16([1.5, -0.0, np.inf])})},
        "nodes": {3: {"count": 7, "mask": np.array([True, False, True])}, 11: {"count": 0}},
        "scalar0d": np.array(2.5, np.float32),
        "bool0d": np.array(True),
        "empty": np.zeros((0,), np.uint16),
        "half": np.arange(6, dtype=np.float16).reshape(2, 3),
        "transposed": np.arange(12, dtype=np.int32).reshape(3, 4).T,  # not C-contiguous
        "complex": np.array([1 + 2j, -3j], np.complex64),
        "nan_bits": np.array([np.nan, -np.nan, 1e-40], np.float32),
        "np_scalars": [np.float32(0.1), np.int64(-(2**62)), np.bool_(True), np.uint8(255)],
        "py": {
            "int": 2**70,
            "float": 0.1,
            "negzero": -0.0,
            "nan": math.nan,
            "inf": -math.inf,
            "bool": True,
            "str": "héllo/world",
            "none": None,
        },
        "lists": [1, 2.0, "x", None, [np.zeros(2, np.int8)]],
        "tuple": (1, np.arange(3, dtype=np.uint64), (True, False)),
        "empty_dict": {},
        "empty_arrays": Arrays(),
    }


def record(r: int, **server) -> dict:
    return {
        "round": r,
        "metrics": {
            "train": {"loss": 1.0 / r, "note": "text"},
            "evaluate": {"acc": 0.5 + r / 100},
            "server": dict(server),
        },
        "seconds": 0.25 * r,
        "sampled": [0, 1, 2],
        "replied": [0, 2],
        "evaluate_sampled": [0, 1, 2],
        "evaluate_replied": [0, 1, 2],
        "failures": [{"node": 1, "kind": "train", "error": "timeout"}],
    }


def make_run(store: Store, run_id: str | None = None, **kw) -> str:
    args = dict(
        project="demo", seed=7, num_rounds=10, num_nodes=3, backend="inline", config={"lr": 0.1, "layers": [32, 16]}
    )
    args.update(kw)
    return store.create_run(run_id=run_id, **args)


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store") as s:
        yield s


# -- state_io -----------------------------------------------------------------------
def test_flatten_unflatten_round_trips_exactly():
    state = rich_state()
    tensors, meta = flatten_state(state)
    assert all(isinstance(v, np.ndarray) and v.flags.c_contiguous for v in tensors.values())
    assert any(k.endswith(":params/a/first") for k in tensors)  # readable keys for other tools
    meta = json.loads(json.dumps(meta, allow_nan=False))  # plain JSON, no NaN tokens
    assert_same(state, unflatten_state(tensors, meta))


def test_state_file_round_trips_exactly_and_keeps_real_names(tmp_path):
    state = rich_state()
    path = tmp_path / "s.safetensors"
    save_state_file(str(path), state)
    back = state_from_bytes(path.read_bytes())
    assert_same(state, back)
    assert isinstance(back["params"], Arrays)
    assert list(back["params"]) == ["z.last", "a/first", "conv:0", "scale", "keep"]
    assert list(back["nodes"]) == [3, 11]


@pytest.mark.parametrize(
    "state, where, what",
    [
        ({"optimizer": {"foo": object()}}, "optimizer/foo", "object"),
        ({"opt": [1, {2, 3}]}, "opt/1", "set"),
        ({"a": np.array(["x"])}, "'a'", "<U1"),
        ({"a": np.array([1], dtype=object)}, "'a'", "object"),
    ],
)
def test_unsupported_values_name_the_path_and_type(state, where, what):
    with pytest.raises(TypeError) as e:
        flatten_state(state)
    assert where in str(e.value) and what in str(e.value)
    assert "keep state as arrays" in str(e.value)


def test_dict_keys_must_be_str_or_int():
    with pytest.raises(TypeError, match="keys must be str or int"):
        flatten_state({"nodes": {(1, 2): 0}})
    with pytest.raises(TypeError, match="keys must be str or int"):
        flatten_state({"nodes": {True: 0}})


# -- runs -----------------------------------------------------------------------------
def test_create_get_and_list_runs(store):
    first = make_run(store)
    second = make_run(store, run_id="my-run", project="other", num_rounds=3)
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", first)
    info = store.get_run(first)
    assert isinstance(info, RunInfo)
    assert (info.project, info.status, info.seed, info.num_rounds, info.num_nodes, info.backend) == (
        "demo",
        "running",
        7,
        10,
        3,
        "inline",
    )
    assert info.config == {"lr": 0.1, "layers": [32, 16]}
    assert info.error is None and info.rounds_completed == 0
    assert [r.run_id for r in store.list_runs()] == [second, first]


def test_generated_run_ids_are_unique(store):
    ids = {make_run(store) for _ in range(20)}
    assert len(ids) == 20


def test_duplicate_and_malformed_run_ids_are_refused(store):
    make_run(store, run_id="r1")
    with pytest.raises(StoreError, match="already exists"):
        make_run(store, run_id="r1")
    with pytest.raises(ValueError, match="not allowed"):
        make_run(store, run_id="../escape")


def test_status_and_update(store):
    rid = make_run(store)
    before = store.get_run(rid).updated
    store.set_status(rid, "failed", error="boom")
    info = store.get_run(rid)
    assert (info.status, info.error) == ("failed", "boom") and info.updated >= before
    store.set_status(rid, "running")
    assert store.get_run(rid).error is None
    store.update_run(rid, num_rounds=20, config={"lr": 0.2})
    info = store.get_run(rid)
    assert (info.num_rounds, info.config) == (20, {"lr": 0.2})
    with pytest.raises(ValueError, match="not one of"):
        store.set_status(rid, "done")
    with pytest.raises(TypeError, match="cannot update status"):
        store.update_run(rid, status="completed")


def test_prefix_lookup(store):
    for rid in ("abc-1", "abc-2", "xyz-9"):
        make_run(store, run_id=rid)
    assert store.get_run("xy").run_id == "xyz-9"
    assert store.get_run("abc-2").run_id == "abc-2"
    with pytest.raises(StoreError, match="ambiguous.*abc-1, abc-2"):
        store.get_run("abc")
    with pytest.raises(StoreError, match="no run"):
        store.get_run("")


def test_unknown_run_message_says_how_to_list(store):
    with pytest.raises(StoreError) as e:
        store.get_run("nope")
    root = store.root
    assert str(e.value) == f"no run 'nope' in store {root}; `corolla runs --store {root}` lists the runs"
    with pytest.raises(StoreError, match="no run 'nope'"):
        store.commit_round("nope", record(1))


def test_events(store):
    rid = make_run(store)
    store.add_event(rid, "resume", "resumed from round 3", round=3)
    store.add_event(rid, "warning", "node 2 slow")
    ev = store.events(rid)
    assert [(e["kind"], e["text"], e["round"]) for e in ev] == [
        ("resume", "resumed from round 3", 3),
        ("warning", "node 2 slow", None),
    ]
    assert ev[0]["id"] < ev[1]["id"] and ev[0]["time"] <= ev[1]["time"]


def test_store_is_usable_from_threads(store):
    rid = make_run(store)
    threads = [threading.Thread(target=lambda: [store.add_event(rid, "t", "x") for _ in range(25)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.events(rid)) == 100


# -- rounds, metrics, checkpoints --------------------------------------------------------
def test_commit_round_rounds_and_metrics(store):
    rid = make_run(store)
    store.commit_round(rid, record(2, nan_metric=math.nan))
    store.commit_round(rid, record(1))
    got = store.rounds(rid)
    assert [r["round"] for r in got] == [1, 2]
    assert got[0] == record(1)
    assert math.isnan(got[1]["metrics"]["server"]["nan_metric"])
    m = store.metrics(rid)
    assert [x for x in m if x[0] == 1] == [(1, "train", "loss", 1.0), (1, "evaluate", "acc", 0.51)]
    (nan_row,) = [x for x in m if x[2] == "nan_metric"]
    assert nan_row[0] == 2 and math.isnan(nan_row[3])
    assert store.get_run(rid).rounds_completed == 2


def test_recommitting_a_round_replaces_it(store):
    rid = make_run(store)
    store.commit_round(rid, record(1), {"w": np.zeros(2)})
    store.commit_round(rid, record(1, extra=5.0), {"w": np.ones(2)})
    assert len(store.rounds(rid)) == 1 and store.rounds(rid)[0]["metrics"]["server"] == {"extra": 5.0}
    assert len([x for x in store.metrics(rid) if x[0] == 1]) == 3
    rnd, state = store.latest_checkpoint(rid)
    assert rnd == 1 and np.array_equal(state["w"], np.ones(2))


def test_round_records_round_trip_through_workflow_records(store):
    from corolla.workflows.history import Failure, RoundRecord

    rec = RoundRecord(
        round=1,
        train={"loss": 0.5},
        evaluate={"acc": 0.9},
        server={"lr": 0.01},
        seconds=1.5,
        sampled=[0, 1],
        replied=[1],
        failures=[Failure(0, "train", "x")],
    )
    rid = make_run(store)
    store.commit_round(rid, rec.to_dict())
    assert RoundRecord.from_dict(store.rounds(rid)[0]) == rec


def test_latest_checkpoint_returns_newest_state(store):
    rid = make_run(store)
    assert store.latest_checkpoint(rid) is None
    store.commit_round(rid, record(1), {"w": np.full(3, 1.0)})
    store.commit_round(rid, record(2), {"w": np.full(3, 2.0)})
    store.commit_round(rid, record(3))  # a round without a checkpoint
    state = rich_state()
    store.commit_round(rid, record(4), state)
    rnd, back = store.latest_checkpoint(rid[:6])
    assert rnd == 4
    assert_same(state, back)


def test_tampered_or_missing_checkpoint_is_detected(store):
    rid = make_run(store)
    store.commit_round(rid, record(1), {"w": np.arange(100, dtype=np.float32)})
    path = store.root / "checkpoints" / rid / "round-00001.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="sha256"):
        store.latest_checkpoint(rid)
    path.unlink()
    with pytest.raises(StoreError, match="missing"):
        store.latest_checkpoint(rid)


def test_only_two_checkpoint_files_are_kept(store):
    rid = make_run(store)
    for r in range(1, 6):
        store.commit_round(rid, record(r), {"w": np.full(2, float(r))})
    files = sorted(p.name for p in (store.root / "checkpoints" / rid).iterdir())
    assert files == ["round-00004.safetensors", "round-00005.safetensors"]
    assert len(store.rounds(rid)) == 5
    assert store.latest_checkpoint(rid)[0] == 5


def test_delete_rounds_after(store):
    rid = make_run(store)
    for r in range(1, 5):
        store.commit_round(rid, record(r), {"w": np.full(2, float(r))} if r in (2, 4) else None)
    assert store.delete_rounds_after(rid, 2) == 2
    assert [r["round"] for r in store.rounds(rid)] == [1, 2]
    assert {x[0] for x in store.metrics(rid)} == {1, 2}
    assert store.latest_checkpoint(rid)[0] == 2
    assert sorted(p.name for p in (store.root / "checkpoints" / rid).iterdir()) == ["round-00002.safetensors"]
    assert store.get_run(rid).rounds_completed == 2


def test_bad_checkpoint_state_writes_nothing(store):
    rid = make_run(store)
    with pytest.raises(TypeError, match="optimizer/foo"):
        store.commit_round(rid, record(1), {"optimizer": {"foo": object()}})
    assert store.rounds(rid) == [] and store.latest_checkpoint(rid) is None
    assert list((store.root / "checkpoints" / rid).iterdir()) == []


# -- the database file -----------------------------------------------------------------
def test_wal_mode_and_reopen(tmp_path):
    with Store(tmp_path) as s:
        rid = make_run(s)
        s.commit_round(rid, record(1))
        conn = sqlite3.connect(tmp_path / "corolla.db")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        # a second reader sees committed data while the writer keeps its connection open
        assert conn.execute("SELECT COUNT(*) FROM rounds").fetchone()[0] == 1
        conn.close()
    with Store(tmp_path) as s:
        assert s.rounds(rid) == [record(1)]
    with pytest.raises(StoreError, match="closed"):
        s.rounds(rid)


def test_newer_schema_is_refused(tmp_path):
    Store(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "corolla.db")
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="schema version 99.*upgrade corolla"):
        Store(tmp_path)


def test_non_database_file_is_a_store_error(tmp_path):
    (tmp_path / "corolla.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="not a usable database"):
        Store(tmp_path)


# -- crash safety ------------------------------------------------------------------------
CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from corolla.records import Arrays
    from corolla.store import Store

    root, rid = sys.argv[1], sys.argv[2]
    store = Store(root)
    latest = store.latest_checkpoint(rid)
    start = latest[0] if latest else 0
    store.delete_rounds_after(rid, start)  # resume: drop rounds the checkpoint does not cover
    for r in range(start + 1, 100000):
        rec = {"round": r, "metrics": {"train": {"loss": 1.0 / r}, "evaluate": {}, "server": {}},
               "seconds": 0.0, "sampled": [0], "replied": [0], "evaluate_sampled": [],
               "evaluate_replied": [], "failures": []}
        state = {"params": Arrays({"w": np.full(100_000, r, np.float32)}), "nodes": {0: {"r": r}}}
        store.commit_round(rid, rec, state if r % 2 == 0 else None)
        if r == start + 2:
            print("ready", flush=True)
""")


def test_sigkill_during_commits_leaves_a_consistent_store(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    root = tmp_path / "store"
    with Store(root) as s:
        rid = make_run(s)
    last = 0
    for delay in (0.0, 0.03, 0.11):
        child = subprocess.Popen(
            [sys.executable, str(script), str(root), rid], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        line = child.stdout.readline()
        assert line == "ready\n", child.stderr.read()
        time.sleep(delay)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        with Store(root) as s:
            assert sqlite3.connect(root / "corolla.db").execute("PRAGMA integrity_check").fetchone() == ("ok",)
            rnd, state = s.latest_checkpoint(rid)
            assert rnd >= last + 2 and rnd % 2 == 0  # progress, and only even rounds checkpoint
            assert np.array_equal(state["params"]["w"], np.full(100_000, rnd, np.float32))
            assert state["nodes"] == {0: {"r": rnd}}
            rounds = [r["round"] for r in s.rounds(rid)]
            assert rounds[:rnd] == list(range(1, rnd + 1))
            assert {m[0] for m in s.metrics(rid)} >= set(range(1, rnd + 1))
            last = rnd
