"""Start and stop real coordinator / node / driver processes on 127.0.0.1 for the deployment tests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "projects" / "tiny"
SKLEARN = ROOT / "examples" / "sklearn-digits"
CLI = [sys.executable, "-m", "corolla.cli.main"]


class Procs:
    """Every process a test starts; `stop_all` ends them (only these, by PID)."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], name: str, **kw) -> subprocess.Popen:
        out = open(self.tmp / f"{name}.out", "w")
        err = open(self.tmp / f"{name}.err", "w")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        p = subprocess.Popen(CLI + args, stdout=out, stderr=err, env=env, cwd=self.tmp, **kw)
        p.name = name  # type: ignore[attr-defined]
        self.procs.append(p)
        return p

    def text(self, name: str, stream: str = "err") -> str:
        return (self.tmp / f"{name}.{stream}").read_text()

    def serve(self, *args: str, name: str = "serve", port: int = 0) -> int:
        p = self.start(["serve", "--address", f"127.0.0.1:{port}", "--store", str(self.tmp / "coord"), *args], name)
        return self.wait_port(p, name)

    def wait_port(self, p: subprocess.Popen, name: str, timeout: float = 20.0) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.text(name, "out"))
            if m:
                return int(m.group(1))
            if p.poll() is not None:
                raise AssertionError(f"{name} exited {p.returncode}: {self.text(name)}")
            time.sleep(0.05)
        raise AssertionError(f"{name} did not start listening within {timeout} s: {self.text(name)}")

    def node(self, port: int, i: int, *args: str, project: Path = TINY, app: str = "tiny_app.client:app", n: int = 3):
        return self.start(
            [
                "node", "--server", f"127.0.0.1:{port}", "--app-dir", str(project), "--app", app,
                "--node-config", f"partition-id={i},num-partitions={n}", *args,
            ],
            f"node{i}",
        )

    def corolla(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout, cwd=self.tmp)

    def wait_nodes(self, port: int, count: int, *client_args: str, timeout: float = 30.0) -> list[dict]:
        end = time.monotonic() + timeout
        rows: list[dict] = []
        while time.monotonic() < end:
            r = self.corolla("nodes", "--server", f"127.0.0.1:{port}", "--json", *client_args)
            if r.returncode == 0:
                rows = json.loads(r.stdout)
                if len(rows) >= count:
                    return rows
            time.sleep(0.2)
        raise AssertionError(f"{count} nodes did not connect within {timeout} s (saw {rows})")

    def kill(self, p: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        if p.poll() is None:
            p.send_signal(sig)
        p.wait(10)

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
