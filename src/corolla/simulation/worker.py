"""A worker process of the `process` backend: what runs after the fork (see ``process``).

* **Start.** `worker_main` runs in the forked child: it asks the kernel to kill it when the
  parent dies (Linux, forked from the main thread), ignores SIGINT (Ctrl-C is the parent's
  business), restores default handlers for the other signals the parent may have taken over,
  closes the parent's pipe ends of every grid (so siblings see EOF when the parent goes) and
  loads the `ClientApp` once (an app object is inherited through the fork, a loader is called
  here), then answers ``ready`` (or ``fail`` with the traceback).
* **Tasks** arrive in chunks and run in order. Before each one the worker writes into its slot
  of the control block which task it is inside and since when, so the parent can tell which
  task killed it or is straggling; tasks dispatched before the slot's cancel index are skipped
  (the parent moved them elsewhere). A broadcast segment is mapped once, read-only, and every
  node gets numpy views of it (writing in place fails with "read-only").
* **Replies** are not pickled with their arrays: the arrays are copied into the worker's own
  shared-memory ring (`Ring`; a full ring is replaced by one twice as big) and a small header
  frame goes to the parent. Frames are sent in batches (after `FLUSH_MAX` replies, `FLUSH_S`
  seconds, or when idle); `FLUSH_SIGNAL` asks for the held ones now. A handler exception, an
  unpicklable reply or arrays that cannot be sent become error replies: nothing a handler
  does stops the worker, except dying.
* **End.** The worker returns on ``stop``, on EOF of its task pipe or when its parent is gone
  (checked every second while idle); the rings it made are unlinked on the way out.
"""

from __future__ import annotations

import itertools
import os
import select
import signal
import sys
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..client.app import ClientApp, run_message
from ..message import Content, Message, Metadata
from ..records import Arrays
from . import shm
from .federation import Federation
from .pipes import (
    FLUSH_SIGNAL,
    READ_SIZE,
    RING_HEADER,
    align,
    array_layout,
    array_views,
    frame,
    inline_ref,
    new_arrays,
    parse_frames,
    ring_consumed,
    slot_views,
    write_arrays,
)

#: a worker's first reply ring is at least this big (and at least 8 replies); a full ring is
#: replaced by one twice as big, up to MAX_RING (or 8 replies, if more)
MIN_RING = 4 * 1024 * 1024
MAX_RING = 256 * 1024 * 1024
#: a worker sends its replies in batches: after this many, after this long, or when idle
FLUSH_MAX = 8
FLUSH_S = 0.002


class Ring:
    """A worker's reply arena: a ring of variable-size regions in one shared-memory segment.

    The worker appends; the parent writes how far it has consumed into the first 8 bytes.
    A region is reused only after the parent has released it and every region before it."""

    def __init__(self, name: str, size: int):
        self.name, self.size = name, size
        self.mm = shm.create(name, size)
        self.ctrl = ring_consumed(self.mm)
        self.cap = size - RING_HEADER
        self.written = 0  # bytes handed out so far (monotonic, wrap padding included)
        self.announced = False

    def alloc(self, n: int) -> tuple[int, int] | None:
        """(offset in the data area, running end) for `n` bytes, or None if full."""
        consumed = int(self.ctrl[0])
        pos = self.written % self.cap
        pad = self.cap - pos if pos + n > self.cap else 0
        if self.written + pad + n - consumed > self.cap:
            return None
        off = 0 if pad else pos
        self.written += pad + n
        return off, self.written


class Worker:
    def __init__(
        self,
        app_src: ClientApp | Callable[[], ClientApp],
        federation: Federation,
        task_fd: int,
        res_fd: int,
        prefix: str,
        ctl: Any,
        slot: int,
    ):
        self.federation = federation
        # shared with the parent: which task this worker is inside, since when; what to skip
        self.running, self.started, self.cancel = slot_views(ctl, slot, 1)
        self.t0 = 0.0
        self.task_fd, self.res_fd = task_fd, res_fd
        self.prefix = prefix
        self.ring: Ring | None = None
        self.ring_serial = itertools.count()
        self.created: list[str] = []  # ring names this worker made (unlinked by the parent)
        self.bcast: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
        self.app_src = app_src
        self.app: ClientApp | None = None
        self.out = bytearray()  # reply frames not yet written
        self.out_n = 0
        self.out_t = 0.0
        self.in_io = False
        self.flush_asked = False

    # -- io -----------------------------------------------------------------------------------
    def send(self, obj: Any) -> None:
        self.emit(frame(obj))
        self.flush()

    def emit(self, data: bytes) -> None:
        self.in_io = True
        if not self.out_n:
            self.out_t = time.monotonic()
        self.out += data
        self.out_n += 1
        self.in_io = False
        if self.flush_asked:
            self.on_flush_signal()

    def flush(self) -> None:
        self.in_io = True
        out = self.out
        if out:
            pos, end = 0, len(out)
            with memoryview(out) as mv:
                while pos < end:
                    pos += os.write(self.res_fd, mv[pos:])
            out.clear()
        self.out_n = 0
        self.in_io = False
        if self.flush_asked:
            self.on_flush_signal()

    def on_flush_signal(self, *_: Any) -> None:
        """The parent's deadline passed: hand over finished replies now (runs as a signal handler)."""
        if self.in_io:
            self.flush_asked = True  # finish what is being written first
            return
        self.flush_asked = False
        self.out += frame(("flushed",))
        self.out_n += 1
        self.flush()

    def run(self, parent_pid: int) -> None:
        try:
            app = self.app_src() if not isinstance(self.app_src, ClientApp) else self.app_src
            if not isinstance(app, ClientApp):
                raise TypeError(f"the app loader returned {type(app).__name__}, not a ClientApp")
            self.app = app
        except BaseException as e:  # noqa: BLE001
            self.send(("fail", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
            return
        self.send(("ready", os.getpid()))
        poller = select.poll()
        poller.register(self.task_fd, select.POLLIN)
        buf = bytearray()
        queue: deque = deque()
        monotonic = time.monotonic
        running, started, cancel = self.running, self.started, self.cancel
        while True:
            while queue:
                task = queue.popleft()
                if task[7] < cancel[0]:
                    continue  # the parent moved it to another worker
                running[0] = task[0] + 1
                started[0] = self.t0 = monotonic()
                self.handle(task)
                running[0] = 0
                if self.out_n >= FLUSH_MAX or monotonic() - self.out_t >= FLUSH_S:
                    self.flush()
            if self.out_n:
                self.flush()  # never sit on replies while idle
            # wait for more work; notice a vanished parent within a second
            while not queue:
                if not poller.poll(1000):
                    if os.getppid() != parent_pid:
                        return
                    continue
                data = os.read(self.task_fd, READ_SIZE)
                if not data:
                    return  # the parent closed its end
                buf += data
                for obj in parse_frames(buf):
                    if obj[0] == "t":
                        queue.extend(obj[1])
                    elif obj[0] == "stop":
                        return

    def cleanup(self) -> None:
        for name in self.created:
            shm.unlink(name)

    # -- one task -----------------------------------------------------------------------------
    def arrays_for(self, aref: Any) -> Arrays:
        if aref is None:
            return Arrays()
        if aref[0] == "i":
            return Arrays(aref[1])
        _, name, size, layout = aref
        views = self.bcast.get(name)
        if views is None:
            # read-only mapping: the views cannot be written nor made writeable
            mm = shm.attach(name, size, readonly=True)
            views = array_views(mm, layout)
            del mm  # the views keep the mapping alive
            self.bcast[name] = views
            while len(self.bcast) > 2:
                self.bcast.popitem(last=False)
        return new_arrays(dict(views))  # a fresh mapping per message, the same shared views

    def handle(self, task: tuple) -> None:
        seq, kind, md, metrics, config, aref, state, _ = task
        msg = Message(kind=kind, content=Content(Arrays(), metrics, config), metadata=Metadata(**md))
        try:
            self.run_task(seq, msg, aref, state)
        except Exception as e:  # noqa: BLE001 - a bug here must not take the worker down
            self.reply_error(
                seq, msg, "exception", f"node {msg.metadata.dst}: {type(e).__name__}: {e}\n{traceback.format_exc()}"
            )

    def run_task(self, seq: int, msg: Message, aref: Any, state: dict) -> None:
        node = msg.metadata.dst
        try:
            msg.content.arrays = self.arrays_for(aref)
        except Exception as e:  # noqa: BLE001
            self.reply_error(
                seq, msg, "exception", f"node {node}: could not map the message's arrays: {type(e).__name__}: {e}"
            )
            return
        ctx = self.federation.context(node, msg.metadata.round, state)
        assert self.app is not None
        reply = run_message(self.app, msg, ctx)
        err = reply.error
        if err is not None:
            text = err.text
            if err.code == "exception" and "read-only" in text and aref is not None and aref[0] == "s":
                text = (
                    "the received arrays are read-only views shared by every node (zero-copy broadcast); "
                    "copy an array before changing it in place, e.g. `w = msg.content.arrays['w'].copy()`.\n" + text
                )
            try:
                data = self.error_frame(seq, reply, err.code, text)
            except Exception:  # noqa: BLE001 - e.g. odd metadata
                data = self.error_frame(seq, msg.error_reply(err.code, text), err.code, text)
            self.emit(data)
            return
        ring = self.ring
        mark = ring.written if ring is not None else 0
        try:
            rref = self.pack(reply.content.arrays)
            data = frame(
                (
                    "r",
                    seq,
                    reply.kind,
                    vars(reply.metadata),
                    reply.content.metrics,
                    reply.content.config,
                    None,
                    rref,
                    ctx.state,
                    time.monotonic() - self.t0,
                )
            )
        except Exception as e:  # noqa: BLE001 - unpicklable metrics/config/state, bad arrays
            if ring is not None and ring is self.ring:
                ring.written = mark  # give back the region nobody will read
            self.reply_error(
                seq, msg, "invalid-reply", f"node {node}: the reply could not be sent back: {type(e).__name__}: {e}"
            )
            return
        if rref is not None and rref[0] == "a":
            self.ring.announced = True  # type: ignore[union-attr]
        self.emit(data)

    def error_frame(self, seq: int, reply: Message, code: str, text: str) -> bytes:
        return frame(
            ("r", seq, reply.kind, vars(reply.metadata), {}, {}, (code, text), None, None, time.monotonic() - self.t0)
        )

    def reply_error(self, seq: int, msg: Message, code: str, text: str) -> None:
        self.emit(self.error_frame(seq, msg.error_reply(code, text), code, text))

    def pack(self, arrays: Any) -> Any:
        """The reference a reply frame carries for `arrays`, written into the ring if they have bytes."""
        if arrays is None or len(arrays) == 0:
            return None
        layout, values, total = array_layout(arrays)
        if total == 0:
            return inline_ref(layout, values)
        n = align(total)
        ring = self.ring
        got = ring.alloc(n) if ring is not None else None
        if got is None:
            size = max(MIN_RING, 8 * (n + RING_HEADER), min(2 * ring.size, MAX_RING) if ring is not None else 0)
            size = -(-size // (1 << 20)) << 20
            name = f"{self.prefix}{next(self.ring_serial)}"
            try:
                new = Ring(name, size)
            except OSError:
                # no room in shared memory: pickle the arrays instead (slow but correct)
                return inline_ref(layout, [np.array(v) for v in values])
            self.created.append(name)
            self.ring = ring = new  # the old ring is unmapped once nothing refers to it
            got = ring.alloc(n)
            assert got is not None
        off, end = got
        write_arrays(ring.mm, RING_HEADER + off, layout, values)
        return ("a", ring.name, 0 if ring.announced else ring.size, off, end, total, tuple(layout))


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the parent dies, even mid-handler."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - elsewhere the pipe's EOF and getppid() still tell
        pass


def worker_main(
    app_src: Any,
    federation: Federation,
    task_fd: int,
    res_fd: int,
    prefix: str,
    parent_pid: int,
    close_fds: Sequence[int],
    ctl: Any,
    slot: int,
    pdeathsig: bool,
) -> None:
    """The body of a forked worker process (the target of its `multiprocessing.Process`)."""
    if pdeathsig and sys.platform.startswith("linux"):
        _die_with_parent()
    if os.getppid() != parent_pid:
        return
    w = Worker(app_src, federation, task_fd, res_fd, prefix, ctl, slot)
    signal.signal(FLUSH_SIGNAL, w.on_flush_signal)
    signal.siginterrupt(FLUSH_SIGNAL, False)  # C-level reads/writes restart instead of failing
    # Ctrl-C goes to the whole process group: the parent handles it, workers ignore it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for s in ("SIGTERM", "SIGHUP", "SIGUSR2", "SIGALRM", "SIGCHLD"):
        sig = getattr(signal, s, None)
        if sig is not None and callable(signal.getsignal(sig)):
            signal.signal(sig, signal.SIG_DFL)
    try:
        signal.set_wakeup_fd(-1)
    except (ValueError, OSError):
        pass
    for fd in close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    # reply message ids must not collide with the parent's or a sibling's
    from .. import message as _message

    _message._prefix = f"{os.getpid():x}"
    _message._ids = itertools.count()
    try:
        w.run(parent_pid)
    except (BrokenPipeError, EOFError):
        pass
    finally:
        w.cleanup()
