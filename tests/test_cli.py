"""End to end through the `corolla` command, in real processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corolla.store import Store

TINY = Path(__file__).parent / "projects" / "tiny"
CLI = [sys.executable, "-m", "corolla.cli.main"]


def corolla(*args, timeout=120, check=True):
    p = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"corolla {' '.join(map(str, args))} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def run_json(tmp_path, *args, name="out.json"):
    out = tmp_path / name
    corolla("run", TINY, "--store", tmp_path / "store", "--json", out, "--quiet", *args)
    return json.loads(out.read_text())


def test_run_json_summary_and_determinism(tmp_path):
    a = run_json(tmp_path, "--seed", "1", name="a.json")
    b = run_json(tmp_path, "--seed", "1", name="b.json")
    c = run_json(tmp_path, "--seed", "2", name="c.json")
    assert a["arrays_sha256"] == b["arrays_sha256"] != c["arrays_sha256"]
    assert [r["round"] for r in a["rounds"]] == [1, 2, 3, 4]
    r = a["rounds"][0]
    assert set(r["metrics"]) == {"train", "evaluate", "server"} and r["seconds"] > 0
    assert "visits" in r["metrics"]["train"] and "norm" in a["final_metrics"]["evaluate"]
    assert a["run_id"] != b["run_id"]


def test_inline_and_process_agree(tmp_path):
    p = run_json(tmp_path, "--backend", "process", name="p.json")
    i = run_json(tmp_path, "--backend", "inline", name="i.json")
    for rp, ri in zip(p["rounds"], i["rounds"]):
        assert rp["metrics"]["evaluate"]["norm"] == pytest.approx(ri["metrics"]["evaluate"]["norm"], rel=1e-5)


def test_runs_show_plot(tmp_path):
    s = run_json(tmp_path, "--rounds", "2")
    runs = json.loads(corolla("runs", "--store", tmp_path / "store", "--json").stdout)
    (row,) = [x for x in runs if x["run_id"] == s["run_id"]]
    assert row["status"] == "completed" and row["rounds_completed"] == 2
    shown = json.loads(corolla("show", s["run_id"][:17], "--store", tmp_path / "store", "--json").stdout)
    assert [r["round"] for r in shown["rounds"]] == [1, 2]
    table = corolla("runs", "--store", tmp_path / "store").stdout
    assert s["run_id"] in table
    assert "train.visits" in corolla("show", s["run_id"], "--store", tmp_path / "store").stdout
    png = tmp_path / "p.png"
    corolla("plot", s["run_id"], "-o", png, "--store", tmp_path / "store")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_without_a_store_here_names_the_stores_below(tmp_path):
    corolla("run", TINY, "--store", tmp_path / "app" / ".corolla", "--rounds", "1", "--quiet")
    p = subprocess.run([*CLI, "runs"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert p.returncode != 0
    assert "no store at .corolla" in p.stderr and "--store app/.corolla" in p.stderr
    args = [*CLI, "runs", "--store", "app/.corolla", "--json"]
    p = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 0 and json.loads(p.stdout)[0]["status"] == "completed"


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    rounds = 6
    full = run_json(tmp_path, "--rounds", rounds, name="full.json")
    store = tmp_path / "killed"
    proc = subprocess.Popen(
        [*CLI, "run", str(TINY), "--store", str(store), "--rounds", str(rounds), "--quiet", "-c", "sleep=0.15"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        run_id = None
        while time.monotonic() < deadline:
            if (store / "corolla.db").exists():
                with Store(store) as st:
                    runs = st.list_runs()
                    if runs and runs[0].rounds_completed >= 2:
                        run_id = runs[0].run_id
                        break
            time.sleep(0.05)
        assert run_id, "the run did not complete 2 rounds within 60 s"
        os.killpg(proc.pid, signal.SIGKILL)  # the runner and its workers, mid-run
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    with Store(store) as st:
        done = st.get_run(run_id).rounds_completed
    assert 2 <= done < rounds
    out = tmp_path / "resumed.json"
    corolla("run", TINY, "--store", store, "--resume", run_id, "--json", out, "--quiet", "-c", "sleep=0.15")
    resumed = json.loads(out.read_text())
    assert resumed["run_id"] == run_id
    assert [r["round"] for r in resumed["rounds"]] == list(range(1, rounds + 1))
    assert resumed["arrays_sha256"] == full["arrays_sha256"]


def test_failing_node_is_in_history_and_log(tmp_path):
    s = run_json(tmp_path, "-c", "fail-node=3", "--nodes", "4", "--rounds", "2", "--backend", "process")
    fails = [f for r in s["rounds"] for f in r["failures"]]
    assert fails and all(f["node"] == 3 and "node 3 cannot train" in f["error"] for f in fails)
    log = (tmp_path / "store" / "logs" / f"{s['run_id']}.log").read_text()
    assert "node 3 cannot train" in log and "Traceback" in log


@pytest.mark.parametrize(
    "args, match",
    [
        (["--nodes", "1"], "federation has 1"),
        (["-c", "x"], "key=value"),
    ],
)
def test_misconfiguration_fails_fast(tmp_path, args, match):
    t0 = time.monotonic()
    p = corolla("run", TINY, "--store", tmp_path / "s", "--quiet", *args, check=False)
    assert p.returncode == 2 and match in p.stderr
    assert time.monotonic() - t0 < 20


def test_unknown_app_path_fails_fast(tmp_path):
    proj = tmp_path / "bad"
    proj.mkdir()
    (proj / "pyproject.toml").write_text(
        '[tool.corolla]\nserver-app = "nowhere.server:app"\nclient-app = "nowhere.client:app"\n'
    )
    p = corolla("run", proj, "--quiet", check=False)
    assert p.returncode == 2
    assert "no module named 'nowhere'" in p.stderr and "check the module path" in p.stderr


def test_every_command_has_help_with_example():
    for cmd in ["new", "run", "runs", "show", "plot"]:
        out = corolla(cmd, "--help").stdout
        assert "example" in out and "corolla " + cmd in out


@pytest.mark.parametrize("example", ["numpy-linreg", "sklearn-digits", "pytorch-digits"])
def test_examples_run_as_one_command(tmp_path, example):
    s = run_json_for(tmp_path, Path(__file__).parents[1] / "examples" / example, "--rounds", "2")
    assert [r["round"] for r in s["rounds"]][-2:] == [1, 2]
    assert s["final_metrics"]["server"]  # centralized evaluation ran
    assert all(not r["failures"] for r in s["rounds"])


def test_new_then_run(tmp_path):
    corolla("new", tmp_path / "my-app", "--template", "numpy")
    assert (tmp_path / "my-app" / "my_app" / "client.py").exists()
    s = run_json_for(tmp_path, tmp_path / "my-app", "--rounds", "2", "--nodes", "3")
    assert s["rounds"][-1]["round"] == 2
    runs = json.loads(corolla("runs", "--store", tmp_path / "store", "--json").stdout)
    assert runs[0]["run_id"] == s["run_id"] and runs[0]["status"] == "completed"
    p = corolla("new", tmp_path / "my-app", "--template", "numpy", check=False)
    assert p.returncode == 2 and "error:" in p.stderr and "Traceback" not in p.stderr


def run_json_for(tmp_path, project, *args):
    out = tmp_path / "summary.json"
    corolla("run", project, "--store", tmp_path / "store", "--json", out, "--quiet", *args, timeout=300)
    return json.loads(out.read_text())
