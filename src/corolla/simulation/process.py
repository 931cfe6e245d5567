"""The `process` backend (the default): warm worker processes, one per core, sharing memory.

``ProcessGrid(app, federation, states=None, workers=None, start_timeout=60.0)``

How a round flows:

* **Workers** are forked once (``multiprocessing`` "fork" context) and reused for every
  round; each loads the `ClientApp` once. What runs inside them (the app, signals, the task
  loop, reply batching) is in `worker`; what crosses between the two sides (frames, array
  layouts, the control block) is in `wire`; segments are made and removed by `shm`.
* **Broadcast once.** Messages of one `send` that share one `Arrays` object are written once
  into one shared-memory segment (arrays packed at 64-byte alignment). A task carries only a
  descriptor (segment name, names/dtypes/shapes/offsets); each worker maps the segment once
  per broadcast (read-only) and hands every node numpy views of it: zero copy, and writing in
  place fails with "read-only" (copy first). Other arrays go the same way when large and are
  pickled with the task when small.
* **Tasks** are small (message header, node id, the node's state from `NodeStates`) and are
  dispatched in message order, in chunks of about 5 ms of work (at most 32 tasks or ~2 MB of
  arrays), to whichever worker has room (two chunks in flight per worker), so every core
  stays busy and replies arrive nearly in order. A node gets one message at a time, as inline.
* **Replies** come back without pickling arrays: a worker copies the reply's arrays into its
  own shared-memory ring and sends a small header. The parent yields a `Message` whose arrays
  are numpy views of that ring (zero copy).
* **Order.** `receive` yields replies in the order of the message ids it is given (arrivals
  are buffered, at most a few chunks ahead), so aggregation folds them in a fixed order:
  results are bit-identical across runs and equal to the inline backend's.

**Lifetime of reply arrays.** A reply's arrays stay valid for as long as anything references
them (the message, its `Arrays`, an array or any view derived from one). The parent tracks
each reply's region with a weak reference and returns it to the worker's ring only once the
last reference is gone, so keeping replies (``list(grid.receive(...))``) is safe; it only
costs ring space (a worker whose ring is full starts a bigger one). The fast path is the
workflow's: fold each reply into the aggregator and drop it before asking for the next.

**Faults.** A handler exception becomes an ``exception`` error reply with its traceback. A
worker that dies (``os._exit``, SIGKILL, segfault) turns the task it was inside (each worker
records it in a small block of memory shared with the parent) into a ``node-lost`` reply
naming the node and how the worker died; its other tasks move to other workers and a
replacement is forked. A task that runs far longer than usual has the tasks queued behind it
moved to other workers. ``receive(ids, timeout)`` ends within `timeout` plus at most ~0.5 s:
replies already finished are collected (workers are asked with SIGUSR1 to hand over what they
hold), unfinished tasks become ``timeout`` replies, and the workers still busy with them are
killed and replaced, so the next round starts clean. No wait is unbounded.

**Cleanup.** `close` (also on ``with``, garbage collection and interpreter exit) stops the
workers (gracefully, then SIGKILL) and unlinks every segment. Segment names live only as long
as needed (a worker's ring until the parent has mapped it, a broadcast until its last task is
done); sweeps by name prefix catch the segments of a worker that died, and a new grid removes
those of grids whose process was killed outright. Names start with ``crl<pid>n<pid namespace>_``.

Node state travels with each task and comes back with the reply (pickled: keep it small); it
is stored only when the handler succeeded. Nothing is kept per node unless it has state, so
a federation of a million nodes costs only what is sampled. The `Federation` (and a
`ClientApp` object) are captured when a worker is forked. A grid is used from one thread.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import os
import selectors
import signal
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ..client.app import ClientApp
from ..grid import NodeRange, timeout_reply
from ..message import Content, Error, Message, Metadata
from ..records import Arrays
from . import shm
from .federation import Federation, NodeStates
from .pipes import (
    FLUSH_SIGNAL,
    READ_SIZE,
    RING_HEADER,
    array_layout,
    array_views,
    control_block,
    frame,
    inline_ref,
    new_arrays,
    parse_frames,
    ring_consumed,
    slot_views,
    write_arrays,
)
from .worker import worker_main

#: arrays not shared by several messages and smaller than this are pickled with the task
INLINE_MAX = 64 * 1024
#: tasks per chunk: at most this many, about this many bytes of arrays and seconds of work
MAX_CHUNK = 32
CHUNK_BYTES = 2 * 1024 * 1024
CHUNK_S = 0.005
#: a task running this long (and 10x longer than usual) is a straggler: the tasks queued behind
#: it move to other workers and the replies its worker finished are fetched
STRAGGLER_S = 0.25
#: a worker inside one task for this long while holding finished replies is asked for them
FLUSH_LATE = 0.01
#: how often the parent looks at what its workers are doing
CHECK_S = 0.01
#: at a deadline, how long to wait for workers to hand over replies they finished but still hold
FLUSH_WAIT = 0.3
#: replies may run this many chunks ahead of the one receive() is waiting for (bounds memory)
WINDOW_CHUNKS = 8
#: how long close() waits for workers to exit before killing them
STOP_GRACE = 1.0

#: every segment name starts with _TAG + the parent's pid and pid namespace (hex): crl<pid>n<ns>_
_TAG = "crl"
_serial = itertools.count(1)
#: parent-side pipe ends and selector fds of every grid in this process; a forked worker closes
#: them all, so that its siblings see EOF when the parent goes away
_PARENT_FDS: set[int] = set()


def _sigkill(proc: Any) -> None:
    try:
        proc.kill()
    except OSError:
        pass


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(code).name
    except ValueError:
        return f"signal {code}"


class _Arena:
    """The parent's view of one worker ring."""

    __slots__ = ("name", "mm", "ctrl", "regions", "retired", "__weakref__")

    def __init__(self, name: str, size: int):
        self.name = name
        self.mm = shm.attach(name, size)
        shm.unlink(name)  # both sides have it mapped: the name is no longer needed
        self.ctrl = ring_consumed(self.mm)
        self.regions: deque[_Region] = deque()
        self.retired = False

    def advance(self) -> None:
        regions = self.regions
        end = -1
        while regions and regions[0].released:
            end = regions.popleft().end
        if end >= 0 and not self.retired:
            self.ctrl[0] = end

    def retire(self) -> None:
        self.retired = True
        self.regions.clear()


class _Region(weakref.ref):
    """Alive while any array of one reply is; its callback frees the ring space."""

    __slots__ = ("arena", "end", "released")

    def __new__(cls, owner: np.ndarray, callback: Callable, arena: _Arena, end: int) -> "_Region":
        return weakref.ref.__new__(cls, owner, callback)

    def __init__(self, owner: np.ndarray, callback: Callable, arena: _Arena, end: int):
        super().__init__(owner, callback)
        self.arena, self.end, self.released = arena, end, False


class _WorkerHandle:
    __slots__ = (
        "slot",
        "uid",
        "proc",
        "pid",
        "task_fd",
        "res_fd",
        "outbox",
        "rbuf",
        "inflight",
        "ready",
        "failed",
        "started",
        "alive",
        "arena",
        "prefix",
        "writing",
        "flushed",
        "dispatched",
        "stuck",
        "asked",
    )

    def __init__(self, slot: int, uid: int, proc: Any, task_fd: int, res_fd: int, prefix: str):
        self.slot, self.uid, self.proc, self.pid = slot, uid, proc, proc.pid
        self.task_fd, self.res_fd = task_fd, res_fd
        self.outbox = bytearray()
        self.rbuf = bytearray()
        self.inflight: deque[int] = deque()
        self.ready = False
        self.failed: str | None = None
        self.started = time.monotonic()
        self.alive = True
        self.arena: _Arena | None = None
        self.prefix = prefix
        self.writing = False
        self.flushed = False
        self.dispatched = 0  # tasks sent to it so far (their index lets the parent cancel them)
        self.stuck: int | None = None  # the straggler task it is inside, if any
        self.asked: int | None = None  # the task it was inside when last asked to flush


class _Task:
    __slots__ = ("seq", "msg", "node", "aref", "seg", "cap", "worker", "discard")

    def __init__(self, seq: int, msg: Message, aref: Any, seg: str | None, cap: int):
        self.seq, self.msg, self.node = seq, msg, msg.metadata.dst
        self.aref, self.seg, self.cap = aref, seg, cap
        self.worker: _WorkerHandle | None = None
        self.discard = False


class _Resources:
    """What must be released even if the grid is never closed (finalizer / interpreter exit)."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.workers: dict[int, _WorkerHandle] = {}  # uid -> handle
        self.segments: dict[str, int] = {}  # broadcast segment name -> tasks still using it
        self.sel = selectors.DefaultSelector()
        self.sel_fd = self.sel.fileno() if hasattr(self.sel, "fileno") else -1
        if self.sel_fd >= 0:
            _PARENT_FDS.add(self.sel_fd)
        self.lock = threading.Lock()
        self.closed = False

    def drop_worker(self, w: _WorkerHandle) -> None:
        """Forget a dead worker: selector, fds, its shared memory."""
        for fd in (w.res_fd, w.task_fd, w.proc.sentinel):
            try:
                self.sel.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass
        for fd in (w.res_fd, w.task_fd):
            _PARENT_FDS.discard(fd)
            try:
                os.close(fd)
            except OSError:
                pass
        w.alive = False
        if w.arena is not None:
            w.arena.retire()
            w.arena = None
        shm.sweep(w.prefix)
        self.workers.pop(w.uid, None)

    def shutdown(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        workers = list(self.workers.values())
        stop = frame(("stop",))
        for w in workers:
            try:
                os.write(w.task_fd, stop)
            except OSError:
                pass
        deadline = time.monotonic() + STOP_GRACE
        for w in workers:
            w.proc.join(max(0.0, deadline - time.monotonic()))
        for w in workers:
            if w.proc.exitcode is None:
                _sigkill(w.proc)
                w.proc.join(5.0)
        for w in workers:
            self.drop_worker(w)
        for name in list(self.segments):
            shm.unlink(name, tracked=True)
        self.segments.clear()
        shm.sweep(self.prefix)
        try:
            self.sel.close()
        except OSError:
            pass
        _PARENT_FDS.discard(self.sel_fd)


class ProcessGrid:
    """Run every node's handler in warm worker processes (one per core) with zero-copy arrays.

    ``app_loader`` is a `ClientApp` (inherited by the forked workers) or a function returning
    one (called once in each worker). ``workers`` defaults to the number of usable cores;
    ``start_timeout`` bounds how long starting a worker (loading the app) may take.

    `receive` yields replies in the order of the ids given; reply arrays are views of shared
    memory, valid as long as they are referenced (see the module docstring).
    """

    def __init__(
        self,
        app_loader: Callable[[], ClientApp] | ClientApp,
        federation: Federation,
        states: NodeStates | None = None,
        workers: int | None = None,
        start_timeout: float = 60.0,
    ):
        if not (isinstance(app_loader, ClientApp) or callable(app_loader)):
            raise TypeError(
                f"app_loader must be a ClientApp or a function returning one, got {type(app_loader).__name__}"
            )
        if workers is None:
            try:
                workers = len(os.sched_getaffinity(0))
            except (AttributeError, OSError):
                workers = os.cpu_count() or 1
        workers = int(workers)
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.app_loader = app_loader
        self.federation = federation
        self.states = states if states is not None else NodeStates()
        self.num_workers = workers
        self.start_timeout = float(start_timeout)
        self._ctx = multiprocessing.get_context("fork")
        shm.sweep_orphans(_TAG)  # segments of grids whose process was killed outright
        self._prefix = f"{_TAG}{os.getpid():x}n{shm.pid_namespace():x}_{next(_serial)}_"
        self._res = _Resources(self._prefix)
        self._finalizer = weakref.finalize(self, _Resources.shutdown, self._res)
        self._slots: list[_WorkerHandle | None] = [None] * workers
        # the control block, shared with every (forked) worker: which task each slot is running
        self._ctl = control_block(workers)
        self._running, self._started, self._cancel = slot_views(self._ctl, 0, workers)
        self._ema: float | None = None  # typical seconds per task
        self._checked = 0.0
        self._want: int | None = None  # the seq the current receive() waits for
        self._start_failures = [0] * workers
        self._uids = itertools.count()
        self._segs = itertools.count()
        self._seq = itertools.count()
        self._tasks: dict[int, _Task] = {}
        self._by_id: dict[str, int] = {}
        self._pending: deque[int] = deque()
        self._done: dict[int, Message] = {}
        self._busy: dict[int, int] = {}
        #: regions whose arrays are gone (weakref callbacks append; must not refer to self)
        self._freed: list[_Region] = []
        self._broken: str | None = None
        try:
            for slot in range(workers):
                self._spawn(slot)
            self._await_ready()
        except BaseException:
            self.close()
            raise

    # -- Grid protocol -------------------------------------------------------------------------
    def node_ids(self) -> NodeRange:
        return self.federation.node_ids()

    def send(self, messages: Sequence[Message]) -> list[str]:
        if self._res.closed:
            raise RuntimeError("this ProcessGrid is closed")
        n = self.federation.num_nodes
        seen: set[str] = set()
        for m in messages:
            if not 0 <= m.metadata.dst < n:
                raise ValueError(f"message to node {m.metadata.dst}, but the federation has nodes 0..{n - 1}")
            mid = m.metadata.message_id
            if mid in self._by_id or mid in seen:
                raise ValueError(f"message id {mid!r} is already pending; every message needs its own id")
            seen.add(mid)
        # group by Arrays object: one shared segment per broadcast
        groups: dict[int, list[Message]] = {}
        for m in messages:
            groups.setdefault(id(m.content.arrays), []).append(m)
        layouts = {
            key: array_layout(msgs[0].content.arrays) if msgs[0].content.arrays else None
            for key, msgs in groups.items()
        }  # validates every dtype before anything is made
        refs: dict[int, tuple[Any, str | None, int]] = {}
        made: list[str] = []
        try:
            for key, msgs in groups.items():
                lay = layouts[key]
                if lay is None:
                    refs[key] = (None, None, MAX_CHUNK)
                    continue
                layout, values, total = lay
                cap = max(1, min(MAX_CHUNK, CHUNK_BYTES // max(total, 1)))
                aref, seg = None, None
                if total > 0 and (len(msgs) > 1 or total > INLINE_MAX):
                    seg = f"{self._prefix}b{next(self._segs)}"
                    try:
                        mm = shm.create(seg, total, track=True)
                    except OSError:
                        seg = None  # no room in shared memory: pickle instead
                    else:
                        made.append(seg)
                        try:
                            write_arrays(mm, 0, layout, values)
                        finally:
                            try:
                                mm.close()
                            except BufferError:
                                pass
                        aref = ("s", seg, total, tuple(layout))
                if aref is None:
                    aref = inline_ref(layout, values)
                refs[key] = (aref, seg, cap)
        except BaseException:
            for seg in made:
                shm.unlink(seg, tracked=True)
            raise
        for key, (aref, seg, cap) in refs.items():
            if seg is not None:
                self._res.segments[seg] = len(groups[key])
        ids = []
        for m in messages:
            aref, seg, cap = refs[id(m.content.arrays)]
            seq = next(self._seq)
            mid = m.metadata.message_id
            self._tasks[seq] = _Task(seq, m, aref, seg, cap)
            self._by_id[mid] = seq
            self._pending.append(seq)
            ids.append(mid)
        self._dispatch()
        return ids

    def receive(self, message_ids: Sequence[str], timeout: float) -> Iterator[Message]:
        """Yield one reply per id, in the order of `message_ids`, within `timeout` seconds."""
        start = time.monotonic()
        if self._res.closed:
            raise RuntimeError("this ProcessGrid is closed")
        seqs = [self._by_id[mid] for mid in message_ids]
        return self._receive(seqs, start, start + float(timeout))

    def close(self) -> None:
        self._tasks.clear()
        self._by_id.clear()
        self._pending.clear()
        self._done.clear()
        self._finalizer()

    def __enter__(self) -> "ProcessGrid":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._slots if w is not None and w.alive]

    # -- receive loop --------------------------------------------------------------------------
    def _receive(self, seqs: list[int], start: float, deadline: float) -> Iterator[Message]:
        i = 0
        done = self._done
        try:
            while i < len(seqs):
                if self._res.closed:
                    raise RuntimeError("this ProcessGrid was closed while receiving")
                seq = seqs[i]
                self._want = seq
                msg = done.pop(seq, None)
                if msg is None:
                    now = time.monotonic()
                    if now >= deadline:
                        self._pump(0.0)  # what already arrived counts
                        if seq not in done:
                            self._expire(seqs[i:], now - start)
                        if seq not in done:  # e.g. received twice: its reply went elsewhere
                            raise KeyError("no reply can come for this message (was it received already?)")
                        continue
                    self._pump(min(deadline - now, CHECK_S))
                    continue
                self._forget(seq)
                i += 1
                yield msg
                msg = None
                if not i & 7:
                    self._pump(0.0)  # keep workers fed and ring space returned
        finally:
            self._want = None
            if i < len(seqs):
                self._abandon(seqs[i:])

    def _forget(self, seq: int) -> None:
        t = self._tasks.pop(seq, None)
        if t is not None:
            self._by_id.pop(t.msg.metadata.message_id, None)

    def _abandon(self, seqs: Sequence[int]) -> None:
        """The receive loop was left early: drop what it will never yield."""
        gone = {seq for seq in seqs if seq in self._tasks and self._tasks[seq].worker is None}
        if gone:
            self._pending = deque(s for s in self._pending if s not in gone)
        for seq in seqs:
            t = self._tasks.get(seq)
            if t is None:
                continue
            if self._done.pop(seq, None) is not None:
                self._forget(seq)
            elif t.worker is None:
                self._release_seg(t)
                self._forget(seq)
            else:
                t.discard = True  # dropped when its reply arrives

    def _release_seg(self, t: _Task) -> None:
        seg = t.seg
        if seg is None:
            return
        t.seg = None
        segs = self._res.segments
        left = segs.get(seg, 0) - 1
        if left > 0:
            segs[seg] = left
        else:
            segs.pop(seg, None)
            shm.unlink(seg, tracked=True)

    # -- workers -------------------------------------------------------------------------------
    def _spawn(self, slot: int) -> _WorkerHandle:
        uid = next(self._uids)
        wprefix = f"{self._prefix}w{uid}_"
        task_r, task_w = os.pipe()
        res_r, res_w = os.pipe()
        _PARENT_FDS.update((task_w, res_r))
        self._running[slot] = 0
        self._cancel[slot] = 0
        try:
            proc = self._ctx.Process(
                target=worker_main,
                args=(
                    self.app_loader,
                    self.federation,
                    task_r,
                    res_w,
                    wprefix,
                    os.getpid(),
                    sorted(_PARENT_FDS),
                    self._ctl,
                    slot,
                    # the death signal fires when the forking *thread* ends: only the main one is safe
                    threading.current_thread() is threading.main_thread(),
                ),
                name=f"corolla-worker-{slot}",
            )
            proc.start()
        except BaseException:
            for fd in (task_r, task_w, res_r, res_w):
                _PARENT_FDS.discard(fd)
                os.close(fd)
            raise
        os.close(task_r)
        os.close(res_w)
        # our workers are joined by close()/the finalizer, not by multiprocessing at exit
        multiprocessing.process._children.discard(proc)  # type: ignore[attr-defined]
        os.set_blocking(task_w, False)
        os.set_blocking(res_r, False)
        w = _WorkerHandle(slot, uid, proc, task_w, res_r, wprefix)
        self._res.workers[uid] = w
        sel = self._res.sel
        sel.register(res_r, selectors.EVENT_READ, ("r", w))
        sel.register(proc.sentinel, selectors.EVENT_READ, ("x", w))
        self._slots[slot] = w
        return w

    def _await_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            pending = [w for w in self._slots if w is not None and not w.ready]
            for w in self._slots:
                if w is not None and w.failed:
                    raise RuntimeError(f"the ClientApp failed to load in a worker process:\n{w.failed}")
            if not pending:
                return
            if any(w is None for w in self._slots):
                raise RuntimeError(f"a worker process died while starting ({self._broken or 'no reason given'})")
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError(
                    f"{len(pending)} of {self.num_workers} worker processes did not load the ClientApp within "
                    f"start_timeout={self.start_timeout:g} s"
                )
            self._pump(min(deadline - now, 0.25), dispatch=False)

    def _live(self) -> list[_WorkerHandle]:
        return [w for w in self._slots if w is not None and w.alive]

    def _on_exit(self, w: _WorkerHandle, reason: str | None = None) -> None:
        """A worker died (or was killed with `reason`): settle its tasks, replace it."""
        if not w.alive:
            return
        self._read(w)  # replies it sent before dying still count
        w.proc.join(1.0)
        if w.proc.exitcode is None:  # its pipe closed but it lives on: end it
            _sigkill(w.proc)
            w.proc.join(1.0)
        code = w.proc.exitcode
        culprit = int(self._running[w.slot]) - 1  # the task it was inside, -1: between tasks
        self._res.drop_worker(w)
        if code is None:
            how = "and could not be reaped"
        elif code < 0:
            how = f"from {_signal_name(-code)}"
        else:
            how = f"with exit code {code}"
        inflight = list(w.inflight)
        w.inflight.clear()
        requeue = []
        for t in self._take_back(inflight):
            if t.seq in self._done:  # already answered (timed out)
                self._release_seg(t)
            elif t.seq == culprit and reason is None:
                self._release_seg(t)
                self._done[t.seq] = t.msg.error_reply(
                    "node-lost",
                    f"node {t.node} was lost: the worker process running it (pid {w.pid}) died {how} while "
                    f"handling a {t.msg.kind!r} message; a replacement worker was started",
                )
            else:
                requeue.append(t.seq)
        self._requeue(requeue)
        slot = w.slot
        self._slots[slot] = None
        if w.failed:
            self._broken = f"the ClientApp failed to load in a worker: {w.failed}"
            return  # a broken app: do not respawn in a loop
        if not w.ready and reason is None:
            self._start_failures[slot] += 1
            self._broken = f"worker process died while starting {how}"
            if self._start_failures[slot] >= 3:
                return
        if not self._res.closed:
            self._spawn(slot)

    def _kill(self, w: _WorkerHandle, reason: str | None) -> None:
        _sigkill(w.proc)
        self._on_exit(w, reason)

    def _unassign(self, t: _Task) -> None:
        t.worker = None
        b = self._busy.get(t.node, 0) - 1
        if b > 0:
            self._busy[t.node] = b
        else:
            self._busy.pop(t.node, None)

    # -- the event pump ------------------------------------------------------------------------
    def _pump(self, timeout: float, dispatch: bool = True) -> None:
        if self._freed:
            self._settle_freed()
        if dispatch:
            self._dispatch()
        events = self._res.sel.select(timeout)
        dead = []
        for key, _ in events:
            tag, w = key.data
            if not w.alive:
                continue
            if tag == "r":
                if not self._read(w):
                    dead.append(w)
            elif tag == "x":
                dead.append(w)
            else:
                self._flush(w)
        for w in dead:
            self._on_exit(w)
        if dispatch:
            now = time.monotonic()
            if now - self._checked > CHECK_S:
                self._checked = now
                self._check_workers(now)
            self._dispatch()

    def _check_workers(self, now: float) -> None:
        """Slow start-ups are killed; a straggler's queued tasks move to other workers."""
        limit = max(STRAGGLER_S, 10 * (self._ema or 0.0))
        for w in self._live():
            if not w.ready:
                if now - w.started > self.start_timeout:
                    self._kill(w, None)
                continue
            if len(w.inflight) < 2:
                continue
            cur = int(self._running[w.slot]) - 1
            if cur < 0:
                continue
            took = now - float(self._started[w.slot])
            if took < FLUSH_LATE:
                continue
            try:
                k = w.inflight.index(cur)
            except ValueError:
                continue
            if k and w.asked != cur:
                # replies it finished wait in its buffer while it works on a long task
                w.asked = cur
                try:
                    os.kill(w.pid, FLUSH_SIGNAL)
                except OSError:
                    pass
            if w.stuck is None and took >= limit and k + 1 < len(w.inflight):
                self._unstick(w, cur)

    def _unstick(self, w: _WorkerHandle, cur: int) -> None:
        w.stuck = cur
        inflight = list(w.inflight)
        k = inflight.index(cur)
        later = inflight[k + 1 :]
        if later:
            self._cancel[w.slot] = w.dispatched  # it skips what it has not started
            w.inflight = deque(inflight[: k + 1])
            self._requeue([t.seq for t in self._take_back(later)])

    def _take_back(self, seqs: Sequence[int]) -> list[_Task]:
        """Take tasks off the worker they were given to; drop those their receive abandoned."""
        kept = []
        for seq in seqs:
            t = self._tasks.get(seq)
            if t is None:
                continue
            self._unassign(t)
            if t.discard:  # abandoned by its receive: nothing to report
                self._release_seg(t)
                self._forget(seq)
            else:
                kept.append(t)
        return kept

    def _requeue(self, seqs: Sequence[int]) -> None:
        """Put tasks back into the pending queue, in message order."""
        if seqs:
            self._pending = deque(sorted([*seqs, *self._pending]))

    def _settle_freed(self) -> None:
        freed = self._freed
        n = len(freed)
        batch = freed[:n]
        del freed[:n]
        arenas = {}
        for r in batch:
            r.released = True
            arenas[id(r.arena)] = r.arena
        for a in arenas.values():
            a.advance()

    def _read(self, w: _WorkerHandle) -> bool:
        """Read whatever the worker sent; False at end of file (it died)."""
        alive = True
        while True:
            try:
                chunk = os.read(w.res_fd, READ_SIZE)
            except BlockingIOError:
                break
            except OSError:
                alive = False
                break
            if not chunk:
                alive = False
                break
            w.rbuf += chunk
            if len(chunk) < READ_SIZE:
                break
        if w.rbuf:
            for obj in parse_frames(w.rbuf):
                tag = obj[0]
                if tag == "r":
                    self._on_reply(w, obj)
                elif tag == "ready":
                    w.ready = True
                    self._start_failures[w.slot] = 0
                elif tag == "flushed":
                    w.flushed = True
                elif tag == "fail":
                    w.failed = obj[1]
        return alive

    def _on_reply(self, w: _WorkerHandle, obj: tuple) -> None:
        _, seq, kind, md, metrics, config, err, rref, state, dur = obj
        ema = self._ema
        self._ema = dur if ema is None else 0.9 * ema + 0.1 * dur
        if w.stuck == seq:
            w.stuck = None
        if w.inflight and w.inflight[0] == seq:
            w.inflight.popleft()
        else:
            try:
                w.inflight.remove(seq)
            except ValueError:
                pass
        try:
            arrays = self._reply_arrays(w, rref)
        except Exception as e:  # noqa: BLE001 - should not happen; never let it stop the round
            arrays = Arrays()
            if err is None:
                err = (
                    "node-lost",
                    f"node {md.get('src')}: its reply's arrays could not be mapped: {type(e).__name__}: {e}",
                )
        t = self._tasks.get(seq)
        if t is None or t.worker is not w:
            return  # a task that was settled otherwise (timed out, requeued)
        self._unassign(t)
        self._release_seg(t)
        if t.discard:
            self._forget(seq)
            return
        if seq in self._done:
            return  # answered already (it timed out): too late to count
        if err is None:
            self.states.put(t.node, state)
            error = None
        else:
            error = Error(*err)
        self._done[seq] = Message(
            kind=kind, content=Content(arrays, metrics, config), metadata=Metadata(**md), error=error
        )

    def _reply_arrays(self, w: _WorkerHandle, rref: Any) -> Arrays:
        if rref is None:
            return Arrays()
        if rref[0] == "i":
            return Arrays(rref[1])
        _, name, size, off, end, total, layout = rref
        arena = w.arena
        if arena is None or arena.name != name:
            if arena is not None:
                arena.retire()
            arena = w.arena = _Arena(name, size or None)
        owner = np.ndarray((total,), np.uint8, buffer=arena.mm, offset=RING_HEADER + off)
        arena.regions.append(_Region(owner, self._freed.append, arena, end))
        return new_arrays(array_views(owner, layout))

    def _flush(self, w: _WorkerHandle) -> None:
        if not w.alive:
            return
        try:
            while w.outbox:
                n = os.write(w.task_fd, w.outbox)
                del w.outbox[:n]
        except BlockingIOError:
            pass
        except OSError:
            w.outbox.clear()  # it is dead; the sentinel tells
        want = bool(w.outbox)
        if want != w.writing:
            w.writing = want
            if want:
                self._res.sel.register(w.task_fd, selectors.EVENT_WRITE, ("w", w))
            else:
                self._res.sel.unregister(w.task_fd)

    def _dispatch(self) -> None:
        pending = self._pending
        if not pending:
            return
        live = self._live()
        if len(live) > 1 and any(w.stuck is not None for w in live):
            live = [w for w in live if w.stuck is None] or live
        if not live:
            if any(s is not None for s in self._slots) or not self._broken:
                return
            while pending:  # no workers will ever come back
                seq = pending.popleft()
                t = self._tasks.get(seq)
                if t is None:
                    continue
                self._release_seg(t)
                self._done[seq] = t.msg.error_reply(
                    "node-lost", f"node {t.node} could not run: no worker processes are left ({self._broken})"
                )
            return
        nw = len(live)
        tasks = self._tasks
        busy = self._busy
        get_state = self.states.get
        want = self._want
        ema = self._ema
        tcap = 4 if ema is None else max(1, min(MAX_CHUNK, int(CHUNK_S / max(ema, 1e-6))))
        while pending:
            w = min(live, key=lambda x: len(x.inflight))
            head = tasks.get(pending[0])
            if head is None:  # forgotten (an interrupted receive)
                pending.popleft()
                continue
            cap = min(head.cap, tcap)
            if want is not None and head.seq - want > WINDOW_CHUNKS * nw * cap:
                return  # far enough ahead of the consumer
            c = max(1, min(cap, math.ceil(len(pending) / (2 * nw))))
            if len(w.inflight) + c > 2 * cap:
                return
            batch = []
            while pending and len(batch) < c:
                t = tasks.get(pending[0])
                if t is None:
                    pending.popleft()
                    continue
                if t.node in busy:
                    break  # one message at a time per node, like the inline backend
                pending.popleft()
                t.worker = w
                busy[t.node] = 1
                m = t.msg
                batch.append(
                    (
                        t.seq,
                        m.kind,
                        vars(m.metadata),
                        m.content.metrics,
                        m.content.config,
                        t.aref,
                        get_state(t.node),
                        w.dispatched,
                    )
                )
                w.dispatched += 1
                w.inflight.append(t.seq)
            if not batch:
                return
            w.outbox += frame(("t", batch))
            self._flush(w)

    def _expire(self, seqs: Sequence[int], waited: float) -> None:
        """The deadline passed: unfinished tasks become timeout replies; busy workers are replaced."""
        # replies a worker finished but still holds count: ask for them, briefly
        holders = {}
        for seq in seqs:
            t = self._tasks.get(seq)
            if t is not None and seq not in self._done and t.worker is not None and t.worker.alive:
                holders[t.worker.uid] = t.worker
        asked = []
        for w in holders.values():
            w.flushed = False
            try:
                os.kill(w.pid, FLUSH_SIGNAL)
                asked.append(w)
            except OSError:
                pass
        end = time.monotonic() + FLUSH_WAIT
        while asked and any(w.alive and not w.flushed for w in asked):
            left = end - time.monotonic()
            if left <= 0:
                break
            self._pump(min(left, 0.05), dispatch=False)
        kill: dict[int, _WorkerHandle] = {}
        expired = set()
        for seq in seqs:
            if seq in self._done:
                continue
            t = self._tasks.get(seq)
            if t is None:
                continue
            self._done[seq] = timeout_reply(t.msg, waited)
            expired.add(seq)
            if t.worker is not None:
                kill[t.worker.uid] = t.worker
            else:
                self._release_seg(t)
        if expired:
            self._pending = deque(s for s in self._pending if s not in expired)
        for w in kill.values():
            self._kill(w, "timeout")
