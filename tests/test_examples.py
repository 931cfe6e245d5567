"""The project templates (`corolla new`) and the examples generated from them.

Each template is rendered into a temporary folder and run in-process with the inline grid,
the way `corolla run` would run it, with its own pyproject.toml run config.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from corolla.simulation.federation import Federation
from corolla.simulation.inline import InlineGrid
from corolla.templates import TEMPLATES, module_name, render
from corolla.workflows import ServerContext

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def rendered(template: str, tmp_path: Path) -> Iterator[tuple[object, object, dict, str]]:
    """Render `template` under a unique name, import its apps; undo the imports afterwards."""
    name = f"t-{template}-{uuid.uuid4().hex[:8]}"
    module = module_name(name)
    project = render(template, tmp_path / name, name)
    meta = tomllib.loads((project / "pyproject.toml").read_text())["tool"]["corolla"]
    sys.path.insert(0, str(project))
    try:
        apps = []
        for key in ("server-app", "client-app"):
            mod, attr = meta[key].split(":")
            assert mod.startswith(module + ".")
            apps.append(getattr(importlib.import_module(mod), attr))
        yield apps[0], apps[1], dict(meta["config"]), module
    finally:
        sys.path.remove(str(project))
        for m in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
            del sys.modules[m]


def simulate(server_app, client_app, cfg: dict, num_rounds: int, num_nodes: int = 20, seed: int = 0):
    grid = InlineGrid(client_app, Federation(num_nodes=num_nodes, seed=seed, run_config=cfg))
    return server_app.run(grid, ServerContext(run_id="test", seed=seed, num_rounds=num_rounds, run_config=cfg))


def central(history, name: str) -> list[float]:
    return [v for _, v in history.metric("server", name)]


# -- render -------------------------------------------------------------------------------------


@pytest.mark.parametrize("template", TEMPLATES)
def test_render_fills_every_placeholder(template, tmp_path):
    project = render(template, tmp_path / "my-proj", "My.Proj-1")
    files = sorted(p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "my_proj_1/__init__.py",
        "my_proj_1/client.py",
        "my_proj_1/server.py",
        "my_proj_1/task.py",
        "pyproject.toml",
    ]
    for f in files:
        assert "{{" not in (project / f).read_text(), f
    meta = tomllib.loads((project / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "My.Proj-1"
    assert meta["tool"]["corolla"]["server-app"] == "my_proj_1.server:app"
    assert meta["tool"]["corolla"]["client-app"] == "my_proj_1.client:app"
    assert meta["tool"]["corolla"]["config"]["num-rounds"] == 20
    assert meta["tool"]["corolla"]["simulation"] == {"nodes": 20, "backend": "process"}


def test_module_name():
    assert module_name("digits-fl") == "digits_fl"
    assert module_name("My Project.v2") == "my_project_v2"
    assert module_name("3d-fl") == "_3d_fl"
    assert module_name("class") == "class_"


def test_render_refuses_bad_requests(tmp_path):
    with pytest.raises(ValueError, match="numpy, sklearn, pytorch"):
        render("jax", tmp_path / "p", "p")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        render("numpy", tmp_path / "full", "p")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="invalid project name"):
        render("numpy", tmp_path / "q", "../evil")
    (tmp_path / "empty").mkdir()
    assert (render("numpy", tmp_path / "empty", "ok") / "pyproject.toml").is_file()


def test_examples_match_their_templates():
    spec = importlib.util.spec_from_file_location("_examples_regenerate", ROOT / "examples" / "regenerate.py")
    regen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(regen)
    assert set(regen.EXAMPLES.values()) == set(TEMPLATES)
    assert regen.check() == [], "examples are stale: run `python examples/regenerate.py`"
    readme = (ROOT / "examples" / "README.md").read_text()
    for name in regen.EXAMPLES:
        assert f"corolla run examples/{name}" in readme


# -- templates run and learn ------------------------------------------------------------------------


def test_numpy_template_loss_decreases(tmp_path):
    with rendered("numpy", tmp_path) as (server_app, client_app, cfg, _):
        h = simulate(server_app, client_app, cfg, num_rounds=3)
    loss = central(h, "loss")
    assert len(loss) == 4 and all(b < a for a, b in zip(loss, loss[1:])), loss
    fed = [v for _, v in h.metric("evaluate", "loss")]
    assert len(fed) == 3 and fed[-1] < fed[0]
    assert all("train-loss" in r.train for r in h.rounds[1:])
    assert len(h.rounds[1].sampled) == 10  # fraction-train = 0.5 of 20


def test_sklearn_template_learns(tmp_path):
    with rendered("sklearn", tmp_path) as (server_app, client_app, cfg, _):
        h = simulate(server_app, client_app, cfg, num_rounds=3)
        again = simulate(server_app, client_app, cfg, num_rounds=3)
    acc = central(h, "accuracy")
    assert acc[3] > acc[0] + 0.3, acc
    assert set(h.rounds[-1].evaluate) == {"loss", "accuracy"}
    assert "train-loss" in h.rounds[-1].train
    assert again.arrays_sha256 == h.arrays_sha256  # seeded end to end


def test_pytorch_template_learns(tmp_path):
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    try:
        with rendered("pytorch", tmp_path) as (server_app, client_app, cfg, _):
            h = simulate(server_app, client_app, cfg, num_rounds=3)
    finally:
        torch.set_num_threads(threads)  # the template pins torch to one thread
    acc = central(h, "accuracy")
    assert acc[3] > acc[0] + 0.3, acc
    assert set(h.rounds[-1].evaluate) == {"loss", "accuracy"}
    assert h.rounds[-1].train["train-loss"] < h.rounds[1].train["train-loss"]


@pytest.mark.slow  # a few seconds: runs by default
def test_sklearn_template_reaches_90_percent_in_20_rounds(tmp_path):
    with rendered("sklearn", tmp_path) as (server_app, client_app, cfg, _):
        assert cfg["num-rounds"] == 20
        h = simulate(server_app, client_app, cfg, num_rounds=20, num_nodes=20)
    acc = central(h, "accuracy")
    assert max(acc) >= 0.90 and acc[-1] >= 0.90, acc
