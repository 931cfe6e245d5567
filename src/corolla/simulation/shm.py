"""POSIX shared-memory segments for the process backend, without resource-tracker surprises.

These are the segments `multiprocessing.shared_memory.SharedMemory` makes (``shm_open`` +
``mmap``), handled directly so that ownership is explicit:

* `create` makes a segment, reserves its pages (``posix_fallocate``: a full ``/dev/shm``
  fails here with `ShmFull` instead of killing a process with SIGBUS later) and, with
  ``track=True``, registers it with the multiprocessing resource tracker so that it is
  unlinked even if the creating process is SIGKILLed.
* `attach` maps an existing segment and never registers it (registering in a second process
  is what makes Python 3.11's tracker warn about "leaked" segments or unlink twice).
  ``readonly=True`` maps it ``PROT_READ``: numpy views of it cannot be made writeable.
* `unlink` removes the name (and the tracker registration if the caller tracked it). The
  memory lives on until every mapping is gone, so a name can be unlinked as soon as every
  process that needs it has mapped it.
* `sweep` unlinks every segment whose name starts with a prefix: the catch-all for a process
  that died between creating a segment and reporting it.

Mappings are plain `mmap.mmap` objects and are never closed explicitly: numpy views keep
their mapping alive and it is unmapped when the last view goes.
"""

from __future__ import annotations

import errno
import mmap
import os

from ..pids import pid_alive

try:  # the module SharedMemory itself uses (CPython, POSIX)
    import _posixshmem
except ImportError:  # pragma: no cover - other platforms
    _posixshmem = None

_SHM_DIR = "/dev/shm"
#: reserve a segment's pages up front (see module docstring)
_FALLOCATE = hasattr(os, "posix_fallocate")


class ShmFull(OSError):
    """The shared-memory filesystem has no room for a segment of the requested size."""


def _open(name: str, flags: int, mode: int = 0o600) -> int:
    if _posixshmem is not None:
        return _posixshmem.shm_open("/" + name, flags, mode)
    return os.open(os.path.join(_SHM_DIR, name), flags | getattr(os, "O_CLOEXEC", 0), mode)


def _shm_unlink(name: str) -> None:
    if _posixshmem is not None:
        _posixshmem.shm_unlink("/" + name)
    else:
        os.unlink(os.path.join(_SHM_DIR, name))


def create(name: str, size: int, *, track: bool = False) -> mmap.mmap:
    """Create segment `name` of `size` bytes (pages reserved) and map it read-write."""
    size = max(int(size), 1)
    fd = _open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR)
    try:
        os.ftruncate(fd, size)
        if _FALLOCATE:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
                    raise ShmFull(e.errno, f"no room in shared memory for {size} bytes") from e
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
        mm = mmap.mmap(fd, size)
    except BaseException:
        try:
            _shm_unlink(name)
        except OSError:
            pass
        raise
    finally:
        os.close(fd)
    if track:
        from multiprocessing import resource_tracker

        resource_tracker.register("/" + name, "shared_memory")
    return mm


def attach(name: str, size: int | None = None, *, readonly: bool = False) -> mmap.mmap:
    """Map the existing segment `name` (its whole size unless `size` is given)."""
    fd = _open(name, os.O_RDONLY if readonly else os.O_RDWR)
    try:
        if size is None:
            size = os.fstat(fd).st_size
        if readonly:
            return mmap.mmap(fd, size, prot=mmap.PROT_READ)
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


def unlink(name: str, *, tracked: bool = False) -> bool:
    """Remove the name; True if it existed. `tracked`: it was created with ``track=True``."""
    try:
        _shm_unlink(name)
        existed = True
    except FileNotFoundError:
        existed = False
    if tracked:
        from multiprocessing import resource_tracker

        try:
            resource_tracker.unregister("/" + name, "shared_memory")
        except Exception:  # noqa: BLE001 - the tracker may be gone at interpreter exit
            pass
    return existed


def names(prefix: str) -> list[str]:
    """Existing segments whose names start with `prefix` (Linux: listed in /dev/shm)."""
    try:
        return [n for n in os.listdir(_SHM_DIR) if n.startswith(prefix)]
    except OSError:
        return []


def pid_namespace() -> int:
    """This process's pid namespace (an inode number; 0 if unknown)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def sweep_orphans(tag: str) -> list[str]:
    """Unlink segments named ``{tag}{pid:x}n{pid namespace:x}_...`` whose creator is gone.

    Owners unlink their segments; this catches the ones left behind when a whole process
    group was SIGKILLed (nothing survived to clean up). Only names from this pid namespace
    are considered, so another container sharing /dev/shm is never touched."""
    ns = pid_namespace()
    if not ns:
        return []
    gone = []
    for n in names(tag):
        head = n[len(tag) :].split("_", 1)[0]
        pid_s, _, ns_s = head.partition("n")
        try:
            pid, their_ns = int(pid_s, 16), int(ns_s, 16)
        except ValueError:
            continue
        if their_ns == ns and pid != os.getpid() and not pid_alive(pid) and unlink(n):
            gone.append(n)
    return gone


def sweep(prefix: str) -> list[str]:
    """Unlink every (untracked) segment whose name starts with `prefix`; returns their names."""
    gone = []
    for n in names(prefix):
        if unlink(n):
            gone.append(n)
    return gone
