"""The buffer pool: blocks come back when the last view is gone, and are handed out again."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

from corolla import buffers
from corolla.buffers import GRANULE, BufferPool
from corolla.records import Arrays
from corolla.strategies import aggregators
from corolla.strategies.aggregators import Mean
from corolla.strategies.base import RoundCtx, Update
from corolla.strategies.server_optimizers import SGD


def test_block_returns_only_when_every_view_is_gone():
    pool = BufferPool(min_bytes=0)
    a = pool.empty((1000, 3), np.float32)
    assert a.shape == (1000, 3) and a.dtype == np.float32 and a.flags.writeable and a.flags.c_contiguous
    assert type(a) is np.ndarray
    row, flat, half = a[5], a.reshape(-1), a.view(np.float16)
    addr = a.ctypes.data
    del a
    gc.collect()
    assert pool.idle_bytes == 0  # views still alive
    del row, flat
    assert pool.idle_bytes == 0
    del half
    assert pool.idle_bytes == GRANULE
    b = pool.empty(3000, np.float32)
    assert b.ctypes.data == addr and pool.hits == 1 and pool.idle_bytes == 0


def test_alignment_and_size_classes():
    pool = BufferPool(min_bytes=0)
    for align in (8, 64, 4096):
        x = pool.empty(123, np.float64, align=align)
        assert x.ctypes.data % align == 0
        del x
    assert [cap for _, cap, _ in pool._idle] == [GRANULE]  # one block, handed out three times
    big = pool.empty(GRANULE, np.uint8)  # one granule plus alignment room: the next class up
    del big
    assert sorted(cap for _, cap, _ in pool._idle) == [GRANULE, 2 * GRANULE]
    small = pool.empty(10, np.uint8)  # takes the small block, not the big one
    assert [cap for _, cap, _ in pool._idle] == [2 * GRANULE]
    del small


def test_small_arrays_bypass_the_pool_and_objects_are_refused_from_it():
    pool = BufferPool(min_bytes=1 << 20)
    x = pool.empty(10, np.float64)
    del x
    assert pool.idle_bytes == 0 and pool.hits == pool.misses == 0
    o = pool.empty(4, object)
    assert o.dtype == object and o.shape == (4,)


def test_idle_bytes_are_capped_oldest_first_and_expire():
    pool = BufferPool(max_idle_bytes=3 * GRANULE, min_bytes=0, max_idle_s=3600)
    blocks = [pool.empty(100 + i, np.uint8) for i in range(5)]
    addrs = [b.ctypes.data for b in blocks]
    for i in range(5):
        blocks[i] = None  # given back in allocation order
    assert pool.idle_bytes == 3 * GRANULE

    def held(addr: int) -> bool:
        return any(raw.ctypes.data <= addr < raw.ctypes.data + cap for _, cap, raw in pool._idle)

    assert [held(a) for a in addrs] == [False, False, True, True, True]  # the oldest were dropped
    pool.max_idle_s = -1.0
    x = pool.empty(1, np.uint8)  # any call expires blocks idle for longer than max_idle_s
    assert pool.idle_bytes == 0 and x.size == 1


def test_threads_share_the_pool_safely():
    pool = BufferPool(min_bytes=0)
    errors = []

    def work(seed: int) -> None:
        try:
            for i in range(200):
                a = pool.empty(1000 + (i % 3), np.float64)
                a.fill(seed)
                assert (a == seed).all()  # nobody else writes a block that is leased
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors and pool.hits > 0


@pytest.fixture
def small_pool(monkeypatch):
    """The process-wide pool, with every size pooled (so small arrays take the pooled paths)."""
    p = BufferPool(min_bytes=0)
    monkeypatch.setattr(buffers, "pool", p)
    return p


def _mean(updates, base, **kw):
    agg = Mean(**kw)
    acc = agg.open({}, RoundCtx(round=1, seed=0, num_nodes=5))
    for i, (w, arrs) in enumerate(updates):
        acc = agg.add(acc, Update(node=i, arrays=arrs, weight=w, base=base))
    return agg.result(acc, {}, RoundCtx(round=1, seed=0, num_nodes=5))[0]


@pytest.mark.parametrize("n", [1, 7, 8, 1001, 40_000])
@pytest.mark.parametrize("window", [1, 2, 16])
def test_segmented_sums_give_the_unsegmented_result(small_pool, monkeypatch, n, window):
    rng = np.random.default_rng(n)
    base = Arrays({"a": rng.standard_normal(n).astype(np.float32), "b": rng.standard_normal((3, 5)).astype(np.float32)})
    ups = [
        (float(i + 1), Arrays({k: (v + rng.standard_normal(v.shape)).astype(np.float32) for k, v in base.items()}))
        for i in range(5)
    ]
    got = _mean(ups, base, window=window, hot_below=0)
    assert small_pool.misses > 0  # the pooled paths ran
    W = sum(w for w, _ in ups)
    for k in base:
        want = sum(w * u[k].astype(np.float64) for w, u in ups) / W - base[k]
        np.testing.assert_allclose(got[k], want.astype(np.float32), rtol=1e-6, atol=1e-6)
    # float32 sums come in two blocks of the array's own size class
    segs = aggregators._accumulator(n, 4)
    assert sum(s.size for s in segs) == n and all(s.ctypes.data % 64 == 0 for s in segs)
    if n >= 16:
        assert len(segs) == 2


def test_rounds_reuse_their_blocks(small_pool):
    """A steady sequence of rounds (replies, sums, result, new model) takes no fresh block after the first rounds."""
    base = Arrays({"w": np.zeros(100_000, np.float32)})
    opt = SGD()
    for r in range(6):
        ups = [(1.0, Arrays({"w": buffers.empty(100_000, np.float32)})) for _ in range(3)]
        for _, u in ups:
            u["w"][:] = r
        update = _mean(ups, base, window=1, hot_below=0)
        del ups
        new, _, _ = opt.step({}, base, update, RoundCtx(round=r + 1, seed=0, num_nodes=3))
        del update
        assert (new["w"] == r).all()
        base = new
        if r == 2:
            misses, hits = small_pool.misses, small_pool.hits
    # rounds 4-6 found every block in the pool: 3 replies, 2 sum segments, the update, the new model each
    assert small_pool.misses == misses and small_pool.hits - hits == 3 * 7


def test_trim_drops_only_blocks_idle_too_long():
    pool = BufferPool(min_bytes=0, max_idle_s=3600)
    a, b = pool.empty(10, np.uint8), pool.empty(10, np.uint8)
    del a
    pool.trim()
    assert pool.idle_bytes == GRANULE  # not idle long enough
    pool.max_idle_s = -1.0
    pool.trim()
    assert pool.idle_bytes == 0 and b.size == 10


def test_two_thread_passes_find_nan_in_either_half_and_match_one_thread(small_pool, monkeypatch):
    from corolla.strategies import parallel
    from corolla.strategies.strategy import _all_finite

    n = 100_003
    assert parallel.halves(n, 4 * n) == [(0, 50_008), (50_008, n)]
    for where in (0, 50_007, 50_008, n - 1):
        v = np.ones(n, np.float32)
        v[where] = np.nan
        assert not _all_finite(v, block=1000)
    assert _all_finite(np.ones(n, np.float32), block=1000)

    rng = np.random.default_rng(0)
    p = Arrays({"w": rng.standard_normal(n).astype(np.float32)})
    u = Arrays({"w": rng.standard_normal(n).astype(np.float32)})
    two = SGD().step({}, p, u, RoundCtx(round=1, seed=0, num_nodes=1))[0]["w"]
    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 1)
    assert parallel.halves(n, 4 * n) == [(0, n)]
    one = SGD().step({}, p, u, RoundCtx(round=1, seed=0, num_nodes=1))[0]["w"]
    assert np.array_equal(one, two) and np.array_equal(one, p["w"] + u["w"])


@pytest.mark.parametrize("window", [1, 16])
def test_mean_gives_the_same_bits_in_one_thread_and_two(small_pool, monkeypatch, window):
    from corolla.strategies import parallel

    rng = np.random.default_rng(1)
    base = Arrays({"w": rng.standard_normal(50_001).astype(np.float32)})
    ups = [(rng.uniform(0.1, 3.0), Arrays({"w": rng.standard_normal(50_001).astype(np.float32)})) for _ in range(4)]
    two = _mean(ups, base, window=window, hot_below=0)["w"]
    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 1)
    one = _mean(ups, base, window=window, hot_below=0)["w"]
    assert np.array_equal(one, two)


@pytest.mark.parametrize(
    "dtype,cohort,holds", [(np.float32, 2, True), (np.float32, 3, False), (np.float64, 1, True), (np.float64, 2, False)]
)
def test_a_small_cohort_of_large_updates_is_held_and_folded_in_one_pass(small_pool, dtype, cohort, holds):
    rng = np.random.default_rng(2)
    base = Arrays({"w": rng.standard_normal(30_000).astype(dtype)})
    ups = [(float(i + 2), Arrays({"w": rng.standard_normal(30_000).astype(dtype)})) for i in range(cohort)]
    agg = Mean(hot_below=0, window=2)  # not held: folded as soon as two are pending
    ctx = RoundCtx(round=1, seed=0, num_nodes=5, cohort=cohort)
    acc = agg.open({}, ctx)
    for i, (w, a) in enumerate(ups):
        acc = agg.add(acc, Update(node=i, arrays=a, weight=w, base=base))
    assert acc.hold is holds and (not acc.sums) is holds  # held: no float64 sums were ever made
    got = agg.result(acc, {}, ctx)[0]["w"]
    want = _mean(ups, base, window=1, hot_below=0)["w"]  # folded one by one
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_a_forked_child_starts_with_a_fresh_pool_and_helper():
    import os

    from corolla.strategies import parallel

    pool = BufferPool(min_bytes=0)
    a = pool.empty(10, np.uint8)
    del a
    assert pool.idle_bytes == GRANULE
    parallel.in_parallel([(int, 1), (int, 2)])  # the helper thread exists now
    pool._lock.acquire()  # as if another thread held it at the fork
    try:
        pid = os.fork()
        if pid == 0:  # the child: must neither hang nor hand out the parent's idle block
            ok = pool.idle_bytes == 0 and pool.empty(10, np.uint8).size == 10
            ok = ok and parallel.in_parallel([(int, 3), (int, 4)]) == [3, 4]
            os._exit(0 if ok else 1)
    finally:
        pool._lock.release()
    import signal
    import time

    end = time.monotonic() + 30
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > end:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child hung on the pool or the helper thread")
        time.sleep(0.02)
    assert os.waitstatus_to_exitcode(done[1]) == 0


def test_a_finished_run_leaves_no_idle_blocks(monkeypatch):
    """run_simulation (through workflows.stored_run.execute) clears the pool's idle blocks at its end."""
    from corolla import ClientApp, FedAvg, Rounds, ServerApp, run_simulation

    p = BufferPool(min_bytes=1 << 20)
    monkeypatch.setattr(buffers, "pool", p)
    app = ClientApp()

    @app.train
    def train(msg, ctx):
        return msg.reply(arrays=Arrays({"w": msg.content.arrays["w"] + 1}), metrics={"num-examples": 1})

    server = ServerApp(lambda ctx: Rounds(strategy=FedAvg(), initial_arrays=Arrays({"w": np.zeros(1 << 19)})))
    history = run_simulation(server, app, num_nodes=2, num_rounds=3, backend="inline")
    assert p.misses > 0 and p.idle_bytes == 0  # pooled during the run, nothing idle after it
    assert (history.arrays["w"] == 3).all()
