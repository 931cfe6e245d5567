"""Deployment end to end: coordinator, nodes and driver as separate processes on 127.0.0.1."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from corolla import Arrays
from corolla.deploy import run_deployment
from corolla.project import Project
from corolla.simulation import run_simulation
from corolla.store import Store
from deploy_procs import SKLEARN, TINY, Procs

pytestmark = pytest.mark.slow


def _credentials(procs: Procs) -> dict:
    tmp = procs.tmp
    assert procs.corolla("certs", "--out", "certs").returncode == 0
    for name in ("node0", "node1", "node2", "driver", "stranger"):
        r = procs.corolla("keys", "new", "--out", f"keys/{name}.key")
        assert r.returncode == 0, r.stderr
    nodes_pub = tmp / "keys" / "nodes.pub"
    nodes_pub.write_text("".join((tmp / "keys" / f"node{i}.key.pub").read_text() for i in range(3)))
    return {
        "serve": [
            "--tls-cert",
            "certs/server.pem",
            "--tls-key",
            "certs/server.key",
            "--authorized-keys",
            "keys/nodes.pub",
            "--driver-keys",
            "keys/driver.key.pub",
        ],
        "driver": ["--root-cert", "certs/ca.pem", "--key", "keys/driver.key"],
        "node": lambda i: ["--root-cert", "certs/ca.pem", "--key", f"keys/node{i}.key"],
    }


def test_tls_and_keys_sklearn_run_completes_and_nodes_are_listed(procs):
    c = _credentials(procs)
    port = procs.serve(*c["serve"])
    for i in range(3):
        procs.node(port, i, *c["node"](i), project=SKLEARN, app="sklearn_digits.client:app")
    rows = procs.wait_nodes(port, 3, *c["driver"])
    assert sorted(r["node_id"] for r in rows) == [0, 1, 2]
    assert all(r["key"].startswith("SHA256:") for r in rows)
    assert sorted(r["properties"]["partition-id"] for r in rows) == [0, 1, 2]
    store = procs.tmp / "driver-store"
    r = procs.corolla(
        "run",
        str(SKLEARN),
        "--server",
        f"127.0.0.1:{port}",
        *c["driver"],
        "--min-nodes",
        "3",
        "--rounds",
        "3",
        "--store",
        str(store),
        "--json",
        "out.json",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads((procs.tmp / "out.json").read_text())
    assert [x["round"] for x in out["rounds"] if x["round"] > 0] == [1, 2, 3]
    assert out["final_metrics"]["server"]["accuracy"] > 0.5  # it learned something, over the network
    r = procs.corolla("runs", "--server", f"127.0.0.1:{port}", *c["driver"], "--json")
    assert r.returncode == 0, r.stderr
    [run] = json.loads(r.stdout)
    assert run["run_id"] == out["run_id"] and run["status"] == "completed" and run["rounds_completed"] == 3


def test_unknown_key_and_plaintext_client_are_refused_with_reasons(procs):
    c = _credentials(procs)
    port = procs.serve(*c["serve"])
    stranger = procs.node(port, 0, "--root-cert", "certs/ca.pem", "--key", "keys/stranger.key")
    assert stranger.wait(30) == 3
    assert "not in this coordinator's authorized node keys" in procs.text("node0")
    assert "refused node" in procs.text("serve") and "unauthorized" in procs.text("serve")
    # a driver without its key, and one with a node's key
    r = procs.corolla("nodes", "--server", f"127.0.0.1:{port}", "--root-cert", "certs/ca.pem")
    assert r.returncode == 3 and "--key" in r.stderr
    r = procs.corolla(
        "nodes", "--server", f"127.0.0.1:{port}", "--root-cert", "certs/ca.pem", "--key", "keys/node1.key"
    )
    assert r.returncode == 3 and "authorized driver keys" in r.stderr
    # plaintext against TLS: refused by the TLS handshake, with what to check
    t0 = time.monotonic()
    r = procs.corolla("nodes", "--server", f"127.0.0.1:{port}", "--insecure", "--key", "keys/driver.key")
    assert r.returncode == 3 and "TLS coordinator needs --root-cert" in r.stderr
    assert time.monotonic() - t0 < 30
    # and the coordinator still serves a good driver
    assert procs.wait_nodes(port, 0, *c["driver"]) == []


def _tiny(procs: Procs, port: int, *args: str, store: str = "drv") -> "subprocess.Popen":  # noqa: F821
    return procs.start(
        [
            "run",
            str(TINY),
            "--server",
            f"127.0.0.1:{port}",
            "--insecure",
            "--min-nodes",
            "3",
            "--store",
            str(procs.tmp / store),
            "--quiet",
            "--json",
            str(procs.tmp / f"{store}.json"),
            *args,
        ],
        f"driver-{store}",
    )


def _wait_rounds(store_dir, at_least: int, timeout: float = 60.0) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (store_dir / "corolla.db").exists():
            with Store(store_dir) as st:
                runs = st.list_runs()
                if runs and runs[0].rounds_completed >= at_least:
                    return runs[0].run_id
        time.sleep(0.05)
    raise AssertionError(f"no run reached round {at_least} within {timeout} s")


def test_node_killed_mid_round_the_round_completes_with_the_others(procs):
    port = procs.serve("--insecure", "--heartbeat", "0.5")
    nodes = [procs.node(port, i, "--insecure") for i in range(3)]
    procs.wait_nodes(port, 3, "--insecure")
    driver = _tiny(procs, port, "--rounds", "4", "-c", "sleep=0.6", "-c", "fraction-train=1.0")
    _wait_rounds(procs.tmp / "drv", 1)
    time.sleep(0.2)  # round 2 is training now (0.6 s per node)
    procs.kill(nodes[2])
    assert driver.wait(60) == 0, procs.text("driver-drv")
    out = json.loads((procs.tmp / "drv.json").read_text())
    rounds = [r for r in out["rounds"] if r["round"] > 0]
    assert len(rounds) == 4
    lost = [f for r in rounds for f in r["failures"] if f["node"] == 2]
    assert lost and "node-lost" in lost[0]["error"]
    assert all(len(r["replied"]) >= 2 for r in rounds)
    assert "node 2 left" in procs.text("serve")


def test_coordinator_restarted_mid_run_the_run_completes_without_losing_history(procs):
    port = procs.serve("--insecure", "--heartbeat", "0.5")
    for i in range(3):
        procs.node(port, i, "--insecure")
    procs.wait_nodes(port, 3, "--insecure")
    driver = _tiny(procs, port, "--rounds", "5", "-c", "sleep=0.4", "-c", "fraction-train=1.0")
    _wait_rounds(procs.tmp / "drv", 2)
    procs.kill(procs.procs[0])  # SIGKILL the coordinator mid-run
    time.sleep(0.5)
    procs.serve("--insecure", "--heartbeat", "0.5", name="serve2", port=port)
    assert driver.wait(90) == 0, procs.text("driver-drv")
    out = json.loads((procs.tmp / "drv.json").read_text())
    assert [r["round"] for r in out["rounds"] if r["round"] > 0] == [1, 2, 3, 4, 5]
    r = procs.corolla("runs", "--server", f"127.0.0.1:{port}", "--insecure", "--json")
    [run] = json.loads(r.stdout)
    assert run["status"] == "completed" and run["rounds_completed"] == 5
    with Store(procs.tmp / "coord") as st:  # the coordinator's own history: every round, before and after
        assert [x["round"] for x in st.rounds(run["run_id"])] == [1, 2, 3, 4, 5]


def test_driver_killed_then_resumed_ends_like_an_uninterrupted_run(procs):
    port = procs.serve("--insecure")
    for i in range(3):
        procs.node(port, i, "--insecure")
    procs.wait_nodes(port, 3, "--insecure")
    full = _tiny(procs, port, "--rounds", "5", "-c", "fraction-train=1.0", store="full")
    assert full.wait(60) == 0, procs.text("driver-full")
    # the tiny app counts visits in Context.state; a fresh set of nodes starts from zero again
    for p in procs.procs[1:4]:
        procs.kill(p)
    for i in range(3):
        procs.node(port, i, "--insecure")
    procs.wait_nodes(port, 3, "--insecure")
    killed = _tiny(procs, port, "--rounds", "5", "-c", "sleep=0.3", "-c", "fraction-train=1.0", store="killed")
    run_id = _wait_rounds(procs.tmp / "killed", 2)
    procs.kill(killed)
    r = procs.corolla(
        "run",
        str(TINY),
        "--server",
        f"127.0.0.1:{port}",
        "--insecure",
        "--store",
        str(procs.tmp / "killed"),
        "--resume",
        run_id,
        "--quiet",
        "--json",
        "resumed.json",
    )
    assert r.returncode == 0, r.stderr
    resumed = json.loads((procs.tmp / "resumed.json").read_text())
    assert [x["round"] for x in resumed["rounds"] if x["round"] > 0] == [1, 2, 3, 4, 5]
    full_out = json.loads((procs.tmp / "full.json").read_text())
    # seeded sampling and node randomness, and nodes that start a re-sent stage from the state
    # before it: exactly the arrays of the uninterrupted run
    assert resumed["run_id"] == run_id
    assert resumed["arrays_sha256"] == full_out["arrays_sha256"]


def test_same_project_same_seed_same_arrays_in_simulation_and_deployment(procs):
    port = procs.serve("--insecure")
    for i in range(3):
        procs.node(port, i, "--insecure")
    procs.wait_nodes(port, 3, "--insecure")
    proj = Project.load(TINY)
    server_app, client_app = proj.load_apps()
    config = {**proj.config, "fraction-train": 1.0}
    sim = run_simulation(server_app, client_app, num_nodes=3, num_rounds=4, seed=7, run_config=config, backend="inline")
    dep = run_deployment(server_app, f"127.0.0.1:{port}", num_rounds=4, seed=7, run_config=config, min_nodes=3)
    assert list(sim.arrays) == list(dep.arrays)
    for k in sim.arrays:
        np.testing.assert_allclose(dep.arrays[k], sim.arrays[k], rtol=1e-6, atol=1e-7)
    assert not np.allclose(sim.arrays["w"], 0)
    assert [r.sampled for r in sim.rounds] == [r.sampled for r in dep.rounds]


@pytest.mark.parametrize("loop", ["default", "asyncio"])
def test_either_event_loop_runs_a_deployment_with_the_same_result(procs, monkeypatch, loop):
    """uvloop where installed (the default), asyncio's loop with COROLLA_EVENT_LOOP=asyncio."""
    if loop == "asyncio":
        monkeypatch.setenv("COROLLA_EVENT_LOOP", "asyncio")  # the processes below inherit it
    else:
        monkeypatch.delenv("COROLLA_EVENT_LOOP", raising=False)
    port = procs.serve("--insecure")
    for i in range(2):
        procs.node(port, i, "--insecure", n=2)
    procs.wait_nodes(port, 2, "--insecure")
    proj = Project.load(TINY)
    server_app, client_app = proj.load_apps()
    config = {**proj.config, "fraction-train": 1.0}
    dep = run_deployment(server_app, f"127.0.0.1:{port}", num_rounds=2, seed=3, run_config=config, min_nodes=2)
    sim = run_simulation(server_app, client_app, num_nodes=2, num_rounds=2, seed=3, run_config=config, backend="inline")
    assert [len(r.replied) for r in dep.rounds if r.round] == [2, 2]
    for k in sim.arrays:
        np.testing.assert_allclose(dep.arrays[k], sim.arrays[k], rtol=1e-6, atol=1e-7)


def test_event_loop_choice(monkeypatch):
    import asyncio

    from corolla.transport.streams import event_loop, run

    monkeypatch.setenv("COROLLA_EVENT_LOOP", "asyncio")
    loop = event_loop()
    assert type(loop).__module__.startswith("asyncio")
    loop.close()
    monkeypatch.delenv("COROLLA_EVENT_LOOP")
    uvloop = pytest.importorskip("uvloop")
    loop = event_loop()
    assert isinstance(loop, uvloop.Loop)
    loop.close()

    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert run(which()).startswith("uvloop")


def test_bad_replies_are_rejected_and_the_run_goes_on(procs, tmp_path):
    bad = procs.tmp / "bad"
    bad.mkdir()
    (bad / "bad_app.py").write_text(
        "import numpy as np\nfrom corolla import Arrays, ClientApp\napp = ClientApp()\n"
        "@app.train\ndef train(msg, ctx):\n"
        "    out = Arrays({k: v + 1 for k, v in msg.content.arrays.items()})\n"
        "    if ctx.node_id == 1: out['w'] = np.zeros((3,), np.float32)\n"
        "    if ctx.node_id == 2: out['w'] = np.full_like(out['w'], np.nan)\n"
        "    return msg.reply(arrays=out, metrics={'num-examples': 1})\n"
        "@app.evaluate\ndef evaluate(msg, ctx):\n    return msg.reply(metrics={'num-examples': 1})\n"
    )
    port = procs.serve("--insecure")
    for i in range(3):
        procs.node(port, i, "--insecure", project=bad, app="bad_app:app")
    procs.wait_nodes(port, 3, "--insecure")
    from corolla import FedAvg, Rounds, ServerApp

    app = ServerApp(
        lambda ctx: Rounds(
            strategy=FedAvg(fraction_train=1.0, fraction_evaluate=0.0),
            initial_arrays=Arrays({"w": np.zeros((2, 2), np.float32)}),
            round_timeout=30,
        )
    )
    h = run_deployment(app, f"127.0.0.1:{port}", num_rounds=2, min_nodes=3)
    for rec in h.rounds:
        assert rec.replied == [0]
        errors = {f.node: f.error for f in rec.failures}
        assert "invalid-reply" in errors[1] and "shape" in errors[1]
        assert "invalid-reply" in errors[2] and ("finite" in errors[2] or "nan" in errors[2].lower())
    np.testing.assert_array_equal(h.arrays["w"], np.full((2, 2), 2, np.float32))
