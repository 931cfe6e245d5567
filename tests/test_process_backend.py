"""The process backend: same results as the inline backend, zero-copy arrays, faults, cleanup."""

from __future__ import annotations

import gc
import os
import time

import numpy as np
import psutil
import pytest

from corolla import Arrays, ClientApp, FedAvg, Message, Rounds, ServerContext
from corolla.simulation.federation import Federation, NodeStates
from corolla.simulation.inline import InlineGrid
from corolla.simulation.process import ProcessGrid

SHM = "/dev/shm"

app = ClientApp()


@app.train
def _train(msg, ctx):
    """Adds seeded noise; counts its calls in the node state; misbehaves on request."""
    cfg = msg.content.config
    node = ctx.node_id
    if node in cfg.get("raise", ()):
        raise RuntimeError(f"node {node} refuses")
    if node in cfg.get("exit", ()):
        os._exit(1)
    if node in cfg.get("sleep", ()):
        time.sleep(cfg.get("sleep_s", 30))
    if node in cfg.get("segv", ()):
        import ctypes
        import faulthandler

        faulthandler.disable()  # the crash is the point; keep pytest's output clean
        ctypes.string_at(0)
    if cfg.get("inplace"):
        for v in msg.content.arrays.values():
            v += 1
    rng = ctx.rng()
    out = Arrays()
    for k, v in msg.content.arrays.items():
        out[k] = v + (rng.standard_normal(v.shape) * 0.01).astype(v.dtype)
    ctx.state["count"] = ctx.state.get("count", 0) + 1
    n = 10 + node % 7
    return msg.reply(arrays=out, metrics={"num-examples": n, "node": float(node)})


@app.evaluate
def _evaluate(msg, ctx):
    return msg.reply(metrics={"num-examples": 5, "loss": float(ctx.node_id)})


def _arrays(p: int = 1000) -> Arrays:
    rng = np.random.default_rng(0)
    return Arrays(
        {
            "w": rng.standard_normal((p // 10, 10)).astype(np.float32),
            "b": rng.standard_normal(7).astype(np.float64),
            "n": np.arange(5, dtype=np.int64),
            "s": np.float32(3.5) * np.ones((), np.float32),
        }
    )


def _msgs(nodes, arrays, rnd=1, config=None, kind="train"):
    return [Message.create(kind, n, arrays=arrays, config=config or {}, round=rnd) for n in nodes]


def _segments(grid: ProcessGrid) -> list[str]:
    return [n for n in os.listdir(SHM) if n.startswith(grid._prefix)]


@pytest.fixture
def fed():
    return Federation(num_nodes=12, run_id="t", seed=7)


@pytest.fixture
def grid(fed):
    g = ProcessGrid(app, fed, workers=2, start_timeout=30)
    yield g
    g.close()


def _copy(reply: Message):
    return (
        reply.metadata.src,
        reply.error,
        {k: np.array(v) for k, v in reply.content.arrays.items()},
        dict(reply.content.metrics),
    )


def test_replies_match_inline_bit_for_bit_and_in_order(grid, fed):
    arrays = _arrays()
    inline = InlineGrid(app, fed)
    nodes = [5, 0, 11, 3, 8, 1, 2, 9, 4, 6, 7, 10]
    for rnd in (1, 2):
        got = [_copy(r) for r in grid.receive(grid.send(_msgs(nodes, arrays, rnd)), 30)]
        want = [_copy(r) for r in inline.receive(inline.send(_msgs(nodes, arrays, rnd)), 30)]
        assert [g[0] for g in got] == nodes  # the order of the ids given
        for g, w in zip(got, want):
            assert g[0] == w[0] and g[1] is None and w[1] is None
            assert g[3] == w[3]
            assert list(g[2]) == list(w[2])
            for k in g[2]:
                assert g[2][k].dtype == w[2][k].dtype and g[2][k].shape == w[2][k].shape
                assert np.array_equal(g[2][k], w[2][k])
    assert grid.states.snapshot() == inline.states.snapshot()
    # evaluate: replies without arrays
    ev = list(grid.receive(grid.send(_msgs(range(12), arrays, kind="evaluate")), 30))
    assert [r.content.metrics["loss"] for r in ev] == [float(n) for n in range(12)]


def test_reply_metadata_is_routed(grid):
    msgs = _msgs([3, 4], _arrays())
    replies = list(grid.receive(grid.send(msgs), 30))
    for m, r in zip(msgs, replies):
        assert r.metadata.src == m.metadata.dst and r.metadata.dst == m.metadata.src
        assert r.metadata.reply_to == m.metadata.message_id and r.metadata.round == 1
    assert replies[0].metadata.message_id != replies[1].metadata.message_id


def _run_workflow(g, fed, rounds=3):
    init = _arrays(2000)
    wf = Rounds(FedAvg(fraction_train=0.75, min_train_nodes=2, fraction_evaluate=0.5), init)
    return wf.run(g, ServerContext(run_id="t", seed=fed.seed, num_rounds=rounds))


def test_workflow_matches_inline_and_repeats_exactly(fed):
    with ProcessGrid(app, fed, workers=2) as g:
        a = _run_workflow(g, fed)
    with ProcessGrid(lambda: app, fed, workers=2) as g:  # a loader works the same
        b = _run_workflow(g, fed)
    c = _run_workflow(InlineGrid(app, fed), fed)
    assert a.arrays.sha256() == b.arrays.sha256() == c.arrays.sha256()
    for k in c.arrays:
        np.testing.assert_allclose(a.arrays[k], c.arrays[k], rtol=1e-6)
    assert [r.train for r in a.rounds] == [r.train for r in c.rounds]
    assert [r.evaluate for r in a.rounds] == [r.evaluate for r in c.rounds]


def test_handler_exception_is_an_error_reply(grid):
    replies = list(grid.receive(grid.send(_msgs(range(6), _arrays(), config={"raise": [2]})), 30))
    assert [r.metadata.src for r in replies] == list(range(6))
    bad = replies[2]
    assert bad.error is not None and bad.error.code == "exception"
    assert "node 2 refuses" in bad.error.text and "Traceback" in bad.error.text
    assert all(r.error is None for i, r in enumerate(replies) if i != 2)
    assert grid.states.get(2) == {}  # a failed handler stores no state
    assert grid.states.get(1) == {"count": 1}


def test_worker_death_is_node_lost_and_the_grid_recovers(grid):
    before = set(grid.worker_pids)
    t0 = time.monotonic()
    replies = list(grid.receive(grid.send(_msgs(range(12), _arrays(), config={"exit": [4]})), 30))
    assert time.monotonic() - t0 < 10
    lost = replies[4]
    assert lost.error is not None and lost.error.code == "node-lost", lost.error
    assert "node 4" in lost.error.text and "exit code 1" in lost.error.text and "died" in lost.error.text
    assert [r.metadata.src for r in replies] == list(range(12))
    assert all(r.error is None for i, r in enumerate(replies) if i != 4)
    assert len(grid.worker_pids) == 2 and set(grid.worker_pids) != before
    replies = list(grid.receive(grid.send(_msgs(range(12), _arrays(), rnd=2)), 30))
    assert all(r.error is None for r in replies)
    assert grid.states.get(4) == {"count": 1} and grid.states.get(5) == {"count": 2}


def test_segfault_is_node_lost(grid):
    replies = list(grid.receive(grid.send(_msgs(range(6), _arrays(), config={"segv": [1]})), 30))
    assert replies[1].error.code == "node-lost" and "SIGSEGV" in replies[1].error.text
    assert all(r.ok for i, r in enumerate(replies) if i != 1)


def test_a_straggler_does_not_hold_up_the_others(grid):
    t0 = time.monotonic()
    arrived = []
    for r in grid.receive(grid.send(_msgs(range(12), _arrays(), config={"sleep": [2], "sleep_s": 1.5})), 30):
        assert r.ok
        arrived.append(time.monotonic() - t0)
    assert arrived[1] < 1.0  # finished before the straggler; handed over while it still runs
    assert arrived[-1] < 1.5 + 1.0  # the tasks queued behind it ran elsewhere


def test_timeout_replies_within_the_deadline_and_next_round_is_clean(grid):
    timeout = 1.5
    t0 = time.monotonic()
    replies = list(grid.receive(grid.send(_msgs(range(8), _arrays(), config={"sleep": [3]})), timeout))
    elapsed = time.monotonic() - t0
    assert elapsed < timeout + 2
    assert [r.metadata.src for r in replies] == list(range(8))
    assert replies[3].error is not None and replies[3].error.code == "timeout"
    # finished work counts, even on the worker that was stuck and got replaced
    assert all(r.error is None for i, r in enumerate(replies) if i != 3), [r.error for r in replies]
    t0 = time.monotonic()
    replies = list(grid.receive(grid.send(_msgs(range(8), _arrays(), rnd=2)), 30))
    assert all(r.error is None for r in replies) and time.monotonic() - t0 < 5


def test_node_state_persists_across_rounds(fed):
    states = NodeStates({3: {"count": 10}})
    with ProcessGrid(app, fed, states, workers=2) as g:
        for rnd in range(1, 4):
            # two messages to one node in one send run one after the other, as inline
            nodes = [0, 1, 3, 0]
            assert all(r.ok for r in g.receive(g.send(_msgs(nodes, _arrays(), rnd)), 30))
    assert states.get(0) == {"count": 6} and states.get(1) == {"count": 3} and states.get(3) == {"count": 13}
    assert states.get(2) == {} and len(states) == 3


def test_broadcast_is_read_only_and_zero_copy(grid):
    arrays = _arrays()
    replies = list(grid.receive(grid.send(_msgs(range(3), arrays, config={"inplace": True})), 30))
    for r in replies:
        assert r.error is not None and r.error.code == "exception"
        assert "read-only" in r.error.text and ".copy()" in r.error.text
    assert np.array_equal(arrays["n"], np.arange(5))  # the server's arrays are untouched
    ok = list(grid.receive(grid.send(_msgs(range(3), arrays)), 30))
    for r in ok:  # reply arrays are views of shared memory, not copies
        for v in r.content.arrays.values():
            base = v
            while isinstance(base, np.ndarray) and base.base is not None:
                base = base.base
            assert type(base).__name__ == "mmap"


def test_kept_replies_stay_valid(grid):
    arrays = _arrays()
    kept = list(grid.receive(grid.send(_msgs(range(12), arrays)), 30))
    snapshot = [{k: np.array(v) for k, v in r.content.arrays.items()} for r in kept]
    for rnd in range(2, 6):  # more replies flow through the workers' rings meanwhile
        for r in grid.receive(grid.send(_msgs(range(12), arrays, rnd)), 30):
            assert r.ok
    for r, s in zip(kept, snapshot):
        for k in s:
            assert np.array_equal(r.content.arrays[k], s[k])


def test_unshared_arrays_and_abandoned_receive(grid):
    big = Arrays({"x": np.arange(100_000, dtype=np.float32)})  # large, one message: shared memory
    small = [Arrays({"x": np.full(3, i, np.float32)}) for i in range(4)]  # small: pickled
    msgs = [Message.create("train", 0, arrays=big)] + [
        Message.create("train", i + 1, arrays=a) for i, a in enumerate(small)
    ]
    replies = list(grid.receive(grid.send(msgs), 30))
    assert all(r.ok for r in replies)
    assert np.allclose(replies[0].content.arrays["x"], big["x"], atol=0.1)
    assert np.allclose(replies[3].content.arrays["x"], 2, atol=0.1)
    # leave a receive early: the rest is dropped and the grid keeps working
    it = grid.receive(grid.send(_msgs(range(12), _arrays())), 30)
    assert next(it).ok
    it.close()
    assert all(r.ok for r in grid.receive(grid.send(_msgs(range(12), _arrays(), rnd=2)), 30))


def test_bad_input(grid):
    with pytest.raises(ValueError, match="nodes 0..11"):
        grid.send(_msgs([12], _arrays()))
    with pytest.raises(KeyError):
        grid.receive(["no-such-id"], 1)
    replies = list(grid.receive(grid.send(_msgs([1], _arrays(), kind="query")), 30))
    assert replies[0].error.code == "exception" and "no handler" in replies[0].error.text


def test_app_loader_failure_raises(fed):
    def loader():
        raise ImportError("no such model")

    with pytest.raises(RuntimeError, match="no such model"):
        ProcessGrid(loader, fed, workers=1, start_timeout=10)


def test_close_leaves_no_processes_or_segments(fed):
    me = psutil.Process()
    g = ProcessGrid(app, fed, workers=2)
    pids = set(g.worker_pids)
    assert pids <= {c.pid for c in me.children(recursive=True)}
    prefix = g._prefix
    it = g.receive(g.send(_msgs(range(12), _arrays())), 30)
    next(it)  # mid-round, with segments in use
    g.close()
    del it
    gc.collect()
    alive = {c.pid for c in me.children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE}
    assert not (pids & alive)
    assert not [n for n in os.listdir(SHM) if n.startswith(prefix)]
    g.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        g.send(_msgs([0], _arrays()))


def test_abandoned_grid_is_cleaned_up_by_the_finalizer(fed):
    g = ProcessGrid(app, fed, workers=1)
    pids, prefix = g.worker_pids, g._prefix
    list(g.receive(g.send(_msgs(range(3), _arrays())), 30))
    del g
    gc.collect()
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not [n for n in os.listdir(SHM) if n.startswith(prefix)]


def test_million_node_federation_costs_only_the_sampled_nodes():
    big = Federation(num_nodes=1_000_000, run_id="big", seed=1)
    states = NodeStates()
    me = psutil.Process()
    with ProcessGrid(app, big, states, workers=2) as g:
        rss0 = me.memory_info().rss
        init = Arrays({"w": np.zeros(1000, np.float32)})
        wf = Rounds(FedAvg(fraction_train=1e-4, min_train_nodes=2, fraction_evaluate=0, min_evaluate_nodes=0), init)
        h = wf.run(g, ServerContext(run_id="big", seed=1, num_rounds=3))
        assert all(len(r.sampled) == 100 and len(r.replied) == 100 for r in h.rounds)
        assert me.memory_info().rss - rss0 < 30 * 2**20
    assert len(states) <= 300  # only nodes that ran hold state
