"""The node side of `deploy_round.py`: its ClientApp, and a pool of nodes in one process.

Imported by `corolla node --app-dir benchmarks --app deploy_node_pool:app`, this module is only
the app. Its `fit` returns the received arrays plus a little noise, added in place, so the node
makes no copy of the model: `a.reshape(-1)[::1024] += 1e-3` touches one element in 1024. That
costs about 1/1000 of a memory pass, so the round measures the framework, not the training.

Run as a script, it starts `--count` `Node` objects in ONE process, on one asyncio loop. The
nodes have ids `--first` to `--first + count - 1`, with `partition-id` the node id and
`num-partitions` = `--total`. This is how `deploy_round.py --nodes-per-process N` puts 1,000
nodes on a 2-core machine:

    python benchmarks/deploy_node_pool.py --server 127.0.0.1:PORT --first 0 --count 250 --total 1000

Each `Node` keeps its own gRPC channel and its own one-thread executor. Opening 1,000 channels
from a few processes needs file descriptors, so the script raises the soft RLIMIT_NOFILE to
the hard limit. SIGTERM or SIGINT stops every node and exits 0.
"""

from __future__ import annotations

import numpy as np

from corolla import ClientApp

#: one element in STRIDE gets the noise
STRIDE = 1024
NOISE = np.float32(1e-3)

app = ClientApp()


@app.train
def train(msg, ctx):
    arrays = msg.content.arrays  # assembled by the node from the stream: fresh and writable
    for v in arrays.values():
        v.reshape(-1)[::STRIDE] += NOISE  # in place: no copy of the model
    return msg.reply(arrays=arrays, metrics={"num-examples": 1})


def _raise_nofile() -> tuple[int, int]:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def main() -> int:
    import argparse
    import asyncio
    import logging
    import signal
    import sys

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", required=True, help="HOST:PORT of a plaintext coordinator (serve --insecure)")
    p.add_argument("--first", type=int, required=True, help="id of the first node")
    p.add_argument("--count", type=int, required=True, help="nodes in this process")
    p.add_argument("--total", type=int, required=True, help="nodes in the whole deployment (num-partitions)")
    p.add_argument("--verbose", action="store_true", help="log every message the nodes handle")
    a = p.parse_args()

    logging.basicConfig(
        level=logging.INFO if a.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    nofile = _raise_nofile()
    from corolla.deploy import Node, NodeRefused
    from corolla.transport.streams import run as run_loop
    from corolla.transport.streams import tune_malloc

    tune_malloc()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        nodes = [
            Node(app, a.server, node_config={"partition-id": i, "num-partitions": a.total}, node_id=i)
            for i in range(a.first, a.first + a.count)
        ]
        print(f"pool: {len(nodes)} nodes {a.first}..{a.first + a.count - 1}, RLIMIT_NOFILE {nofile}", flush=True)
        await asyncio.gather(*(n.run(stop) for n in nodes))

    try:
        run_loop(run())
    except NodeRefused as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
