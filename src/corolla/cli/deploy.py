"""Deployment commands: serve, node, nodes, certs, keys (and the --server options of run/runs)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from ..transport.streams import run as run_loop

EXAMPLES = {
    "serve": (
        "examples:\n"
        "  corolla certs --out certs && corolla keys new --out driver.key\n"
        "  corolla serve --address 0.0.0.0:9091 --tls-cert certs/server.pem --tls-key certs/server.key \\\n"
        "      --authorized-keys nodes.pub --driver-keys driver.key.pub\n"
        "  corolla serve --address 127.0.0.1:9091 --insecure           # local experiments only"
    ),
    "node": (
        "examples:\n"
        "  corolla node --server coord.example.org:9091 --root-cert certs/ca.pem --key node0.key \\\n"
        "      --app-dir my-app --app my_app.client:app --node-config partition-id=0,num-partitions=3\n"
        "  corolla node --server 127.0.0.1:9091 --insecure --app my_app.client:app"
    ),
    "nodes": "example:\n  corolla nodes --server coord.example.org:9091 --root-cert certs/ca.pem --key driver.key",
    "certs": (
        "example:\n  corolla certs --out certs --host 127.0.0.1 --host coord.example.org\n"
        "  (development certificates: a CA, a server and a client certificate)"
    ),
    "keys": (
        "example:\n  corolla keys new --out node0.key      # writes node0.key and node0.key.pub\n"
        "  cat node0.key.pub >> nodes.pub           # the coordinator's --authorized-keys file"
    ),
}


def add_tls_client_options(p: argparse.ArgumentParser) -> None:
    """The options every command that talks to a coordinator takes."""
    p.add_argument(
        "--root-cert", metavar="FILE", help="CA certificate to trust for the coordinator (default: the system's)"
    )
    p.add_argument("--insecure", action="store_true", help="plaintext connection (only for a coordinator --insecure)")
    p.add_argument("--cert", metavar="FILE", help="client certificate, for a coordinator that requires mutual TLS")
    p.add_argument("--cert-key", metavar="FILE", help="the client certificate's private key")
    p.add_argument("--key", metavar="FILE", help="Ed25519 key that identifies this node or driver (corolla keys new)")


def add_deploy_parsers(cmd: Any) -> None:
    serve = cmd("serve", "run a coordinator: nodes and drivers connect to it")
    serve.add_argument("--address", default="127.0.0.1:9091", help="HOST:PORT to listen on (default 127.0.0.1:9091)")
    serve.add_argument("--insecure", action="store_true", help="plaintext, no TLS (local experiments only)")
    serve.add_argument("--tls-cert", metavar="FILE", help="server certificate (PEM)")
    serve.add_argument("--tls-key", metavar="FILE", help="server private key (PEM)")
    serve.add_argument("--client-ca", metavar="FILE", help="require client certificates signed by this CA (mTLS)")
    serve.add_argument(
        "--authorized-keys", metavar="FILE", help="accept only nodes whose Ed25519 public key is in FILE"
    )
    serve.add_argument("--driver-keys", metavar="FILE", help="accept only drivers whose Ed25519 public key is in FILE")
    serve.add_argument("--store", metavar="DIR", default=".corolla-coordinator", help="where runs are persisted")
    serve.add_argument("--heartbeat", type=float, default=2.0, metavar="S", help="heartbeat interval (default 2 s)")

    node = cmd("node", "run a long-lived node that trains the ClientApp you choose on your data")
    node.add_argument("--server", required=True, metavar="HOST:PORT", help="the coordinator")
    node.add_argument("--app", required=True, metavar="MODULE:ATTR", help="the ClientApp to run")
    node.add_argument("--app-dir", default=".", metavar="DIR", help="folder to import the app from (default: .)")
    node.add_argument(
        "--node-config",
        action="append",
        default=[],
        metavar="KEY=VALUE,...",
        help="what the app needs to find its data, e.g. partition-id=0,num-partitions=3",
    )
    node.add_argument("--node-id", type=int, help="ask for this node id (default: partition-id, else from the key)")
    node.add_argument("--name", default="", help="a name shown by `corolla nodes`")
    add_tls_client_options(node)

    nodes = cmd("nodes", "list the nodes connected to a coordinator")
    nodes.add_argument("--server", required=True, metavar="HOST:PORT", help="the coordinator")
    nodes.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_tls_client_options(nodes)

    certs = cmd("certs", "make development TLS certificates (a CA, a server and a client certificate)")
    certs.add_argument("--out", required=True, metavar="DIR", help="folder to write them to")
    certs.add_argument("--host", action="append", default=[], help="a name or IP the server is reached by (repeatable)")
    certs.add_argument("--days", type=int, default=365, help="validity (default 365)")
    certs.add_argument("--force", action="store_true", help="overwrite existing files")

    keys = cmd("keys", "make an Ed25519 key pair for a node or a driver")
    keys.add_argument("action", choices=["new"], help="new: make a key pair")
    keys.add_argument("--out", required=True, metavar="FILE", help="private key file (the public key: FILE.pub)")
    keys.add_argument("--force", action="store_true", help="overwrite existing files")


# -- shared ---------------------------------------------------------------------------------
def _daemon_logging(args: argparse.Namespace) -> None:
    """serve and node are long-lived: they log what they do to stderr."""
    level = logging.DEBUG if args.verbose else logging.INFO
    root = logging.getLogger()
    root.setLevel(level)
    for h in root.handlers:
        h.setLevel(level)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))


def channel_credentials(args: argparse.Namespace) -> Any:
    from ..transport import credentials as cred

    if args.insecure:
        if args.root_cert or args.cert:
            raise ValueError("--insecure cannot be combined with --root-cert / --cert")
        return None
    if bool(args.cert) != bool(args.cert_key):
        raise ValueError("mutual TLS needs both --cert and --cert-key")
    return cred.channel_credentials(args.root_cert, args.cert, args.cert_key)


def load_key(args: argparse.Namespace) -> Any:
    from ..transport import credentials as cred

    return cred.load_private_key(args.key) if args.key else None


def _run_async(main: Any) -> int:
    """Run a daemon coroutine; SIGTERM and Ctrl-C stop it cleanly."""

    async def runner() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        await main

    try:
        run_loop(runner())
    except asyncio.CancelledError:
        pass
    return 0


# -- commands ----------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from ..deploy.coordinator import serve
    from ..transport import credentials as cred

    _daemon_logging(args)
    creds = None
    if args.insecure:
        if args.tls_cert or args.tls_key:
            raise ValueError("--insecure cannot be combined with --tls-cert / --tls-key")
        logging.getLogger("corolla").warning("serving plaintext (--insecure): use TLS beyond local experiments")
    else:
        if not (args.tls_cert and args.tls_key):
            raise ValueError(
                "the coordinator serves TLS: give --tls-cert FILE and --tls-key FILE "
                "(development ones: corolla certs --out DIR), or --insecure for a local plaintext experiment"
            )
        creds = cred.server_credentials(args.tls_cert, args.tls_key, args.client_ca)
    node_keys = cred.load_authorized_keys(args.authorized_keys) if args.authorized_keys else None
    driver_keys = cred.load_authorized_keys(args.driver_keys) if args.driver_keys else None
    if node_keys is None:
        logging.getLogger("corolla").warning("no --authorized-keys: any node that can connect is accepted")
    if driver_keys is None:
        logging.getLogger("corolla").warning("no --driver-keys: any driver that can connect may run jobs")

    def ready(port: int) -> None:
        host = args.address.rsplit(":", 1)[0]
        print(f"corolla coordinator listening on {host}:{port} ({'TLS' if creds else 'plaintext'})", flush=True)

    return _run_async(
        serve(
            args.address,
            args.store,
            credentials=creds,
            authorized_keys=node_keys,
            driver_keys=driver_keys,
            heartbeat_s=args.heartbeat,
            ready=ready,
        )
    )


def cmd_node(args: argparse.Namespace) -> int:
    from ..client.app import ClientApp
    from ..deploy.node import Node, NodeRefused
    from ..project import load_object, parse_config_overrides

    _daemon_logging(args)
    app = load_object(args.app, Path(args.app_dir), what="client app")
    if not isinstance(app, ClientApp):
        raise TypeError(f"{args.app} is a {type(app).__name__}, not a corolla.ClientApp")
    node = Node(
        app,
        args.server,
        credentials=channel_credentials(args),
        key=load_key(args),
        node_config=parse_config_overrides(args.node_config),
        node_id=args.node_id,
        name=args.name,
    )
    try:
        return _run_async(node.run())
    except NodeRefused as e:
        print(f"error: {e}", file=sys.stderr)
        return 3


def _driver(args: argparse.Namespace, min_nodes: int = 0, wait: float = 0.0) -> Any:
    from ..deploy.driver import DeployGrid

    return DeployGrid(
        args.server,
        credentials=channel_credentials(args),
        key=load_key(args),
        min_nodes=min_nodes,
        wait_nodes_s=wait,
        reconnect_for=10.0,
    )


def cmd_nodes(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..wire import codec

    with _driver(args) as grid:
        table = grid.node_ids()
    now = time.time()
    rows = [
        {
            "node_id": i.node_id,
            "name": i.name,
            "properties": codec.from_entries(i.properties),
            "connected_s": round(now - i.connected_since, 1),
            "last_seen_s": round(now - i.last_seen, 1),
            "key": i.key_fingerprint,
            "in_flight": i.in_flight,
        }
        for i in table.infos
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    t = Table(title=f"{len(rows)} nodes connected to {args.server}")
    for col in ("node id", "name", "properties", "connected", "last seen", "key"):
        t.add_column(col)
    for r in rows:
        props = ", ".join(f"{k}={v}" for k, v in r["properties"].items())
        t.add_row(
            str(r["node_id"]), r["name"], props, f"{r['connected_s']:.0f} s", f"{r['last_seen_s']:.1f} s ago", r["key"]
        )
    Console(width=160).print(t)
    return 0


def server_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    with _driver(args) as grid:
        runs = grid.list_runs()
    return [
        {
            "run_id": r.run_id,
            "status": r.status,
            "rounds_completed": r.rounds_done,
            "num_rounds": r.num_rounds,
            "seed": r.seed,
            "project": r.project,
            "created": r.created,
            "error": r.error or None,
        }
        for r in runs
    ]


def cmd_certs(args: argparse.Namespace) -> int:
    from ..transport.credentials import make_dev_certs

    hosts = args.host or ("127.0.0.1", "localhost")
    paths = make_dev_certs(args.out, hosts=hosts, days=args.days, overwrite=args.force)
    print(f"wrote development certificates to {args.out}:")
    print(f"  coordinator: --tls-cert {paths.server_cert} --tls-key {paths.server_key}")
    print(f"  nodes and drivers: --root-cert {paths.ca_cert}")
    print(
        f"  mutual TLS: coordinator --client-ca {paths.ca_cert}; clients --cert {paths.client_cert} "
        f"--cert-key {paths.client_key}"
    )
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from ..transport.credentials import fingerprint, load_authorized_keys, new_key_pair

    private, public = new_key_pair(args.out, overwrite=args.force)
    fp = fingerprint(next(iter(load_authorized_keys(public))))
    print(f"wrote {private} (keep it secret) and {public} ({fp})")
    print(f"add the public key to the coordinator's allow-list:  cat {public} >> authorized_keys")
    return 0


COMMANDS = {"serve": cmd_serve, "node": cmd_node, "nodes": cmd_nodes, "certs": cmd_certs, "keys": cmd_keys}
