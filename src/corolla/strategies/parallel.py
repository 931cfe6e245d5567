"""Two-thread passes over large arrays, for the server side's memory-bound loops.

A deployment's driver folds, checks and updates a large model while nothing else runs beside
it, so one core idles. These helpers split such a pass into spans, run the first in the calling
thread and the rest in one helper thread. Each span is computed exactly as it would be in one
thread, so results do not depend on the split. Arrays below `MIN_BYTES` run in one thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import buffers

_helper: ThreadPoolExecutor | None = None


def _forget_helper() -> None:
    """A forked child has no helper thread: make a new one when needed."""
    global _helper
    _helper = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helper)


def worth_it(nbytes: int) -> bool:
    """Whether a pass over `nbytes` is split: the same threshold as the buffer pool's."""
    return nbytes >= buffers.pool.min_bytes and (os.cpu_count() or 1) > 1


def halves(n: int, nbytes: int) -> list[tuple[int, int]]:
    """[lo, hi) spans of `n` elements: two (cut at a multiple of 8) for a large pass, else one."""
    half = -(-n // 16) * 8
    return [(0, half), (half, n)] if worth_it(nbytes) and 0 < half < n else [(0, n)]


def in_parallel(jobs: list[tuple[Callable[..., Any], ...]]) -> list[Any]:
    """Run each ``(fn, *args)``: the first half of the list in this thread, the second half in
    one helper thread at the same time (on one core, all in this thread). Returns their results
    in order."""
    global _helper

    def run(part: list[tuple[Callable[..., Any], ...]]) -> list[Any]:
        return [fn(*args) for fn, *args in part]

    if len(jobs) < 2 or (os.cpu_count() or 1) < 2:
        return run(jobs)
    if _helper is None:
        _helper = ThreadPoolExecutor(1, thread_name_prefix="corolla-pass")
    mine, theirs = jobs[: len(jobs) // 2], jobs[len(jobs) // 2 :]
    future = _helper.submit(run, theirs)
    try:
        first = run(mine)
    finally:
        rest = future.result()
    return first + rest
