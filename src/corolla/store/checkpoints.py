"""Checkpoint files: written atomically, verified on load, pruned only once unreferenced.

Order of operations is what keeps a SIGKILL harmless: a file is complete and durable
(temp file, fsync, rename, directory fsync) before any row points at it, and a file is
deleted only after the row pointing at it is gone.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from ..pids import pid_alive
from .errors import StoreError
from .state_io import save_state_file, state_from_bytes

_FINAL = re.compile(r"round-\d+\.safetensors")
_TEMP = re.compile(r"\.round-\d+\.safetensors\.(\d+)\.[0-9a-f]+\.tmp")


def checkpoint_name(round: int) -> str:
    return f"round-{round:05d}.safetensors"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(path: Path, state: dict) -> str:
    """Atomically write `state` to `path`; return the file's sha256."""
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        _fsync_dir(path.parent.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        save_state_file(str(tmp), state)
        digest = hashlib.sha256()
        with open(tmp, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return digest.hexdigest()


def read_checkpoint(path: Path, sha256: str) -> dict:
    """Load a checkpoint, refusing a file whose bytes are not the ones the store recorded."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StoreError(f"checkpoint file {path} is missing") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise StoreError(
            f"checkpoint file {path} is damaged or was modified: sha256 {actual}, the store recorded {sha256}"
        )
    return state_from_bytes(data)


def remove_unreferenced(directory: Path, keep: set[str]) -> None:
    """Delete checkpoint files not in `keep`, and temp files left by dead writers."""
    if not directory.is_dir():
        return
    for p in directory.iterdir():
        if _FINAL.fullmatch(p.name):
            if p.name not in keep:
                p.unlink(missing_ok=True)
        elif m := _TEMP.fullmatch(p.name):
            pid = int(m.group(1))
            if pid != os.getpid() and not pid_alive(pid):
                p.unlink(missing_ok=True)
