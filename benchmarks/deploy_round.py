"""Deployment round: real processes on 127.0.0.1, round time against a raw-socket floor, as one JSON line.

    python benchmarks/deploy_round.py --nodes 10 --params 10 --rounds 20
    python benchmarks/deploy_round.py --nodes 2 --params 1e8 --rounds 3
    python benchmarks/deploy_round.py --nodes 1000 --nodes-per-process 250 --params 10 --rounds 3

What runs: a coordinator process (`corolla serve --insecure`) and K nodes. By default each node
is its own `corolla node` process. With `--nodes-per-process N`, K/N processes of
`deploy_node_pool.py` each run N `Node`s on one asyncio loop. The driver is this process, through
`run_deployment`. All of it binds 127.0.0.1 only. The workload is R rounds of FedAvg over all K
nodes on a float32 model of P parameters (`--arrays` arrays). `fit` returns the received arrays
with a little noise added in place (see deploy_node_pool.py). There is no evaluation and no store.

Fields:
* `round_s_median`: median of `History.rounds[i].seconds`, without round 1 when R > 1 (warm-up).
  `round_s_all` lists every round.
* `bytes_per_round` = (1 + 3K) * 4P, the array bytes that cross a socket each round:
  driver -> coordinator once (1 model: the broadcast crosses the driver's stream once),
  coordinator -> K nodes (K), K nodes -> coordinator (K), and coordinator -> driver (K replies).
* `floor_s`: the time to move `bytes_per_round` through one raw loopback TCP connection, measured
  in this run: `--floor-reps` times before the deployment starts and as many times after its last
  round (the machine's speed drifts over a run; `floor_s_before` and `floor_s_after` list them),
  each batch after one warm-up; the median of all is reported. A sender and a receiver process
  use `sendall` of 1 MiB memoryview slices and `recv_into` a preallocated, pre-touched buffer (a
  ring of at most 64 MiB). The receiver acks the last byte.
* `ratio` = round_s_median / floor_s.
* `peak_rss_mib`: the sum of VmHWM (peak RSS) over every process: coordinator, node processes,
  and this driver. It is read from /proc/PID/status after the last round, before anything is
  stopped. Peaks of different processes need not coincide, so this is an upper bound on the
  simultaneous total. `coordinator_driver_peak_rss_mib` is coordinator + driver.
* `cpu_s_per_round`: CPU seconds (user + system, all threads) per steady round of the
  coordinator, the driver, and all node processes together, from /proc/PID/stat. With 2 cores, a
  round cannot take less than their sum / 2.
* `loadavg_1m`: the 1-minute load average at the start and at the end (other jobs share the machine).
* `startup_s`: from starting the coordinator to round 1 starting, including the wait for all K
  nodes to connect.

Safety: every process this script starts is stopped at the end (SIGTERM, then SIGKILL after
`--stop-timeout`), also on errors. Children get PR_SET_PDEATHSIG, so they die with this
process. A watchdog thread stops the run when a started process exits early, or when
MemAvailable falls below `--min-free-mib` (it SIGKILLs the nodes first). `--timeout` bounds
the whole run.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing as mp
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from corolla.transport.streams import tune_malloc

tune_malloc()

from corolla import Arrays, FedAvg, Rounds, ServerApp  # noqa: E402
from corolla.deploy import run_deployment  # noqa: E402
from corolla.workflows import NullObserver  # noqa: E402

HERE = Path(__file__).resolve().parent
CLI = [sys.executable, "-m", "corolla.cli.main"]
MIB = 1 << 20


# -- the floor: one raw loopback TCP connection ---------------------------------------------------
SLICE = 1 << 20
SRC_BYTES = 16 << 20
RING_BYTES = 64 << 20


def _floor_receiver(listener: socket.socket, total: int, reps: int) -> None:
    conn, _ = listener.accept()
    listener.close()
    ring = bytearray(min(max(total, 1), RING_BYTES))  # bytearray(n) is written with zeros: touched
    view = memoryview(ring)
    for _ in range(reps):
        left, pos = total, 0
        while left:
            n = conn.recv_into(view[pos : pos + min(left, len(ring) - pos)])
            if n == 0:
                return
            left -= n
            pos = (pos + n) % len(ring)
        conn.sendall(b"k")  # ack the last byte
    conn.close()


def _floor_sender(port: int, total: int, reps: int, out) -> None:  # noqa: ANN001 - a Connection
    src = np.full(SRC_BYTES, 7, np.uint8)  # touched
    view = memoryview(src)
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        left, pos = total, 0
        while left:
            n = min(SLICE, left, SRC_BYTES - pos)
            s.sendall(view[pos : pos + n])
            left -= n
            pos = (pos + n) % SRC_BYTES
        if s.recv(1) != b"k":
            raise RuntimeError("floor receiver stopped early")
        times.append(time.perf_counter() - t0)
    s.close()
    out.send(times)
    out.close()


def measure_floor(total: int, reps: int, start: str = "fork") -> list[float]:
    """Seconds to move `total` bytes over loopback, `reps` times (after one warm-up run).
    `start`: "fork" before gRPC has run in this process, "spawn" after."""
    ctx = mp.get_context(start)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    rx, tx = ctx.Pipe(duplex=False)
    recv = ctx.Process(target=_floor_receiver, args=(listener, total, reps + 1), daemon=True)
    send = ctx.Process(target=_floor_sender, args=(port, total, reps + 1, tx), daemon=True)
    recv.start()
    listener.close()
    send.start()
    try:
        if not rx.poll(600):
            raise RuntimeError("floor measurement did not finish within 600 s")
        times = rx.recv()[1:]
        rx.close()
    finally:
        for p in (send, recv):
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
    return times


# -- processes --------------------------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    _libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Procs:
    """Every process this benchmark starts; `stop_all` ends exactly these, by PID."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        out = open(self.tmp / f"{name}.out", "w")
        err = open(self.tmp / f"{name}.err", "w")
        p = subprocess.Popen(
            args,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=self.tmp,
            preexec_fn=_die_with_parent,
        )
        out.close()
        err.close()
        self.procs.append((name, p))
        return p

    def text(self, name: str, stream: str = "err") -> str:
        try:
            return (self.tmp / f"{name}.{stream}").read_text()
        except OSError:
            return ""

    def check_alive(self) -> None:
        for name, p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}: {self.text(name)[-2000:]}")

    def kill_nodes(self) -> None:
        for name, p in self.procs:
            if name != "coordinator" and p.poll() is None:
                p.kill()

    def stop_all(self, timeout: float) -> None:
        for _, p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        end = time.monotonic() + timeout
        for _, p in self.procs:
            try:
                p.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


def sig(x: float, digits: int = 4) -> float:
    """`x` rounded to `digits` significant digits."""
    return float(f"{x:.{digits}g}")


def vm_hwm_mib(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def mem_available_mib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


class Watchdog:
    """Stops the run early: kills the nodes and interrupts the driver when MemAvailable falls
    below `min_free_mib`, and interrupts the driver when a started process exits."""

    def __init__(self, procs: Procs, min_free_mib: float):
        self.procs, self.min_free = procs, min_free_mib
        self.tripped: str | None = None
        self.low = float("inf")
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True, name="watchdog")

    def _run(self) -> None:
        import _thread

        while not self._stop.wait(0.1):
            free = mem_available_mib()
            self.low = min(self.low, free)
            if free < self.min_free:
                self.tripped = f"MemAvailable fell to {free:.0f} MiB (< --min-free-mib); nodes killed"
                self.procs.kill_nodes()
            else:
                dead = [(n, p.returncode) for n, p in self.procs.procs if p.poll() is not None]
                if dead:
                    name, rc = dead[0]
                    self.tripped = f"{name} exited with {rc} during the run: {self.procs.text(name)[-1500:]}"
            if self.tripped is not None:
                _thread.interrupt_main()
                return

    def __enter__(self) -> "Watchdog":
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def start_coordinator(procs: Procs, heartbeat: float, timeout: float = 30.0) -> tuple[int, subprocess.Popen]:
    p = procs.start(
        "coordinator",
        [
            *CLI,
            "serve",
            "--address",
            "127.0.0.1:0",
            "--insecure",
            "--store",
            str(procs.tmp / "coord"),
            "--heartbeat",
            str(heartbeat),
        ],
    )
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", procs.text("coordinator", "out"))
        if m:
            return int(m.group(1)), p
        if p.poll() is not None:
            raise RuntimeError(f"the coordinator exited with {p.returncode}: {procs.text('coordinator')}")
        time.sleep(0.05)
    raise RuntimeError(f"the coordinator did not listen within {timeout} s: {procs.text('coordinator')}")


def start_nodes(procs: Procs, port: int, nodes: int, per_process: int) -> None:
    server = f"127.0.0.1:{port}"
    if per_process <= 1:
        for i in range(nodes):
            procs.start(
                f"node{i}",
                [
                    *CLI,
                    "node",
                    "--server",
                    server,
                    "--insecure",
                    "--app-dir",
                    str(HERE),
                    "--app",
                    "deploy_node_pool:app",
                    "--node-config",
                    f"partition-id={i},num-partitions={nodes}",
                ],
            )
        return
    for first in range(0, nodes, per_process):
        count = min(per_process, nodes - first)
        procs.start(
            f"pool{first}",
            [
                sys.executable,
                str(HERE / "deploy_node_pool.py"),
                "--server",
                server,
                "--first",
                str(first),
                "--count",
                str(count),
                "--total",
                str(nodes),
            ],
        )


# -- the run ----------------------------------------------------------------------------------------
def model(params: int, arrays: int) -> Arrays:
    """P float32 zeros in `arrays` arrays (halving sizes, like sim_overhead.py, for arrays > 1)."""
    if arrays <= 1:
        return Arrays({"w": np.zeros(params, np.float32)})
    sizes = [params >> (i + 1) for i in range(arrays - 1)]
    sizes.append(params - sum(sizes))
    return Arrays({f"layer{i}": np.zeros(s, np.float32) for i, s in enumerate(sizes)})


def cpu_s(pid: int | str = "self") -> float:
    """User + system CPU seconds of a process, all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Timer(NullObserver):
    """Marks round 1's start, and snapshots every process's CPU time around the steady rounds
    (from the start of round 2, or round 1 when there is only one, to the end of the last)."""

    def __init__(self, procs: Procs, rounds: int) -> None:
        self.procs, self.rounds = procs, rounds
        self.first_round_started: float | None = None
        self.cpu0: dict[str, float] = {}
        self.cpu1: dict[str, float] = {}

    def _cpu(self) -> dict[str, float]:
        out = {"driver": cpu_s()}
        for name, p in self.procs.procs:
            try:
                out[name] = cpu_s(p.pid)
            except OSError:
                pass
        return out

    def round_started(self, round, num_rounds, stage, sampled):  # noqa: ANN001 - RunObserver
        if self.first_round_started is None:
            self.first_round_started = time.perf_counter()
        if round == min(2, self.rounds) and not self.cpu0:
            self.cpu0 = self._cpu()

    def round_finished(self, record, state):  # noqa: ANN001 - RunObserver
        if record.round == self.rounds:
            self.cpu1 = self._cpu()

    def cpu_per_round(self) -> dict[str, float]:
        """CPU seconds per steady round: coordinator, driver, all node processes together."""
        n = max(1, self.rounds - 1) if self.rounds > 1 else 1
        d = {k: (self.cpu1[k] - self.cpu0[k]) / n for k in self.cpu1 if k in self.cpu0}
        nodes = sum(v for k, v in d.items() if k not in ("driver", "coordinator"))
        return {
            "coordinator": sig(d.get("coordinator", 0.0), 3),
            "driver": sig(d.get("driver", 0.0), 3),
            "nodes": sig(nodes, 3),
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=10, help="K: nodes, all trained every round")
    p.add_argument("--params", type=float, default=10, help="P: float32 parameters in the model")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--arrays", type=int, default=1, help="split the model into this many arrays (default 1)")
    p.add_argument("--nodes-per-process", type=int, default=1, help="N > 1: N nodes per deploy_node_pool.py process")
    p.add_argument("--heartbeat", type=float, default=2.0, help="the coordinator's heartbeat (s)")
    p.add_argument("--wait-nodes", type=float, default=None, help="seconds to wait for K nodes (default 60 + K/10)")
    p.add_argument("--floor-reps", type=int, default=3)
    p.add_argument("--no-floor", action="store_true")
    p.add_argument("--min-free-mib", type=float, default=1500, help="abort below this MemAvailable")
    p.add_argument("--timeout", type=float, default=900, help="abort the whole run after this many seconds")
    p.add_argument("--stop-timeout", type=float, default=10)
    p.add_argument("--keep-logs", action="store_true", help="keep the processes' logs (their folder is printed)")
    p.add_argument("--out", help="also append the JSON line to this file")
    a = p.parse_args()
    K, P, R = a.nodes, int(a.params), a.rounds
    bytes_per_round = (1 + 3 * K) * 4 * P

    def on_timeout(signum, frame):  # noqa: ANN001
        raise TimeoutError(f"benchmark exceeded --timeout {a.timeout:.0f} s")

    def on_term(signum, frame):  # noqa: ANN001
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGALRM, on_timeout)
    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(int(a.timeout))

    load_start = os.getloadavg()[0]
    floor_before = [] if a.no_floor else measure_floor(bytes_per_round, a.floor_reps)
    floor_after: list[float] = []
    floor = None

    def server(ctx):  # noqa: ANN001
        return Rounds(
            strategy=FedAvg(fraction_train=1.0, min_train_nodes=K, fraction_evaluate=0.0, min_evaluate_nodes=0),
            initial_arrays=model(P, a.arrays),
            round_timeout=600,
        )

    tmp = Path(tempfile.mkdtemp(prefix="corolla-deploy-round-"))
    procs = Procs(tmp)
    timer = Timer(procs, R)
    result: dict = {}
    error = None
    guard = Watchdog(procs, a.min_free_mib)
    try:
        t_start = time.perf_counter()
        port, coord = start_coordinator(procs, a.heartbeat)
        start_nodes(procs, port, K, a.nodes_per_process)
        with guard:
            history = run_deployment(
                ServerApp(server),
                f"127.0.0.1:{port}",
                num_rounds=R,
                seed=0,
                min_nodes=K,
                wait_nodes_s=a.wait_nodes if a.wait_nodes is not None else 60 + K / 10,
                observer=timer,
            )
        procs.check_alive()
        # peaks, before anything is stopped
        coord_mib = vm_hwm_mib(coord.pid)
        node_mibs = [vm_hwm_mib(pr.pid) for name, pr in procs.procs if name != "coordinator"]
        driver_mib = vm_hwm_mib()
        if not a.no_floor:
            floor_after = measure_floor(bytes_per_round, a.floor_reps, "spawn")  # gRPC threads run here now
            floor = statistics.median(floor_before + floor_after)
        rounds = [r.seconds for r in history.rounds if r.round >= 1]
        replied = [len(r.replied) for r in history.rounds if r.round >= 1]
        steady = rounds[1:] if len(rounds) > 1 else rounds
        med = statistics.median(steady)
        result = {
            "benchmark": "deploy_round",
            "nodes": K,
            "nodes_per_process": max(1, a.nodes_per_process),
            "node_processes": len(node_mibs),
            "params": P,
            "arrays": max(1, a.arrays),
            "rounds": R,
            "round_s_median": round(med, 4),
            "round_s_all": [round(x, 4) for x in rounds],
            "replied_per_round": replied,
            "bytes_per_round": bytes_per_round,
            "floor_s": None if floor is None else sig(floor),
            "floor_s_before": [sig(x) for x in floor_before],
            "floor_s_after": [sig(x) for x in floor_after],
            "ratio": None if not floor else sig(med / floor),
            "effective_gb_s": round(bytes_per_round / med / 1e9, 3),
            "cpu_s_per_round": timer.cpu_per_round(),
            "startup_s": round(timer.first_round_started - t_start, 3) if timer.first_round_started else None,
            "peak_rss_mib": round(coord_mib + sum(node_mibs) + driver_mib, 1),
            "coordinator_driver_peak_rss_mib": round(coord_mib + driver_mib, 1),
            "coordinator_peak_rss_mib": round(coord_mib, 1),
            "driver_peak_rss_mib": round(driver_mib, 1),
            "node_process_peak_rss_mib_max": round(max(node_mibs), 1),
            "node_process_peak_rss_mib_sum": round(sum(node_mibs), 1),
            "model_mib": round(4 * P / MIB, 1),
            "min_mem_available_mib": round(guard.low, 0),
            "loadavg_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],
            "cpus": os.cpu_count(),
            "arrays_sha256": history.arrays_sha256,
        }
    except BaseException as e:  # noqa: BLE001 - report, then stop every process below
        error = e
        if guard.tripped is not None:
            error = RuntimeError(guard.tripped)
    finally:
        signal.alarm(0)
        procs.stop_all(a.stop_timeout)
    if error is not None:
        result = {
            "benchmark": "deploy_round",
            "nodes": K,
            "params": P,
            "rounds": R,
            "nodes_per_process": max(1, a.nodes_per_process),
            "error": f"{type(error).__name__}: {error}",
            "floor_s": None if floor is None else sig(floor),
            "bytes_per_round": bytes_per_round,
            "driver_peak_rss_mib": round(vm_hwm_mib(), 1),
            "min_mem_available_mib": round(guard.low, 0),
            "logs": str(tmp),
        }
        for name in ("coordinator", *(n for n, _ in procs.procs[1:3])):
            tail = procs.text(name)[-1500:]
            if tail:
                print(f"--- {name} stderr (tail) ---\n{tail}", file=sys.stderr)
    line = json.dumps(result)
    print(line, flush=True)
    if a.out:
        with open(a.out, "a") as f:
            f.write(line + "\n")
    if error is None and not a.keep_logs:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    elif error is None:
        print(f"logs: {tmp}", file=sys.stderr)
    if error is not None:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
