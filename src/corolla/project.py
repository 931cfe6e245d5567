"""A corolla project: a folder whose pyproject.toml has a ``[tool.corolla]`` table.

[tool.corolla]
server-app = "my_app.server:app"
client-app = "my_app.client:app"
seed = 0
[tool.corolla.config]        # run config defaults; `-c key=value` overrides
num-rounds = 3
[tool.corolla.simulation]
nodes = 10
backend = "process"
"""

from __future__ import annotations

import ast
import importlib
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .records import Config


class ProjectError(ValueError):
    """The project or one of its references is wrong; the message names the fix."""


@dataclass
class Project:
    path: Path
    name: str
    server_app: str
    client_app: str
    seed: int = 0
    config: Config = field(default_factory=dict)
    simulation: dict[str, Any] = field(default_factory=dict)
    #: [tool.corolla.deployment]: min-nodes, wait-nodes (seconds) for `corolla run --server`
    deployment: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path = ".") -> "Project":
        root = Path(path).resolve()
        toml = root / "pyproject.toml" if root.is_dir() else root
        if not toml.is_file():
            raise ProjectError(
                f"no pyproject.toml in {root}; pass a project folder, or create one with `corolla new NAME`"
            )
        try:
            data = tomllib.loads(toml.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ProjectError(f"{toml} is not valid TOML: {e}") from None
        tool = data.get("tool", {}).get("corolla")
        if tool is None:
            raise ProjectError(
                f"{toml} has no [tool.corolla] table; add one with server-app and client-app (see `corolla new --help`)"
            )
        missing = [k for k in ("server-app", "client-app") if k not in tool]
        if missing:
            raise ProjectError(
                f'[tool.corolla] in {toml} lacks {", ".join(missing)} (e.g. client-app = "pkg.client:app")'
            )
        return cls(
            path=toml.parent,
            name=data.get("project", {}).get("name", toml.parent.name),
            server_app=tool["server-app"],
            client_app=tool["client-app"],
            seed=int(tool.get("seed", 0)),
            config=dict(tool.get("config", {})),
            simulation=dict(tool.get("simulation", {})),
            deployment=dict(tool.get("deployment", {})),
        )

    def load_apps(self) -> tuple[Any, Any]:
        from .client.app import ClientApp
        from .workflows.server_app import ServerApp

        server = load_object(self.server_app, self.path, "server-app")
        client = load_object(self.client_app, self.path, "client-app")
        if not isinstance(server, ServerApp):
            raise ProjectError(f"server-app {self.server_app!r} is a {type(server).__name__}, not a corolla.ServerApp")
        if not isinstance(client, ClientApp):
            raise ProjectError(f"client-app {self.client_app!r} is a {type(client).__name__}, not a corolla.ClientApp")
        return server, client


def load_object(ref: str, search_path: str | Path | None = None, what: str = "app") -> Any:
    """Import ``module.sub:attr``; errors say which reference failed and how to fix it."""
    if ":" not in ref:
        raise ProjectError(f"{what} {ref!r} must look like 'package.module:attribute'")
    module_name, attr = ref.split(":", 1)
    if search_path is not None and str(search_path) not in sys.path:
        sys.path.insert(0, str(search_path))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            where = f" under {search_path}" if search_path else ""
            raise ProjectError(
                f"cannot import {what} {ref!r}: no module named {e.name!r}{where}; check the module path "
                f"in [tool.corolla] (it is relative to the project folder)"
            ) from None
        raise
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ProjectError(
                f"cannot load {what} {ref!r}: module {module_name!r} has no attribute {part!r}; "
                f"check the name after ':'"
            )
        obj = getattr(obj, part)
    return obj


def parse_config_overrides(items: list[str]) -> Config:
    """``["lr=0.1", "name=x", "flags=[1,2]"]`` -> dict; values parse as Python/TOML literals, else str."""
    out: Config = {}
    for item in items:
        for part in _split_top(item):
            if "=" not in part:
                raise ProjectError(f"config override {part!r} must look like key=value")
            k, v = part.split("=", 1)
            out[k.strip()] = _literal(v.strip())
    return out


def _split_top(s: str) -> list[str]:
    """Split on commas outside brackets and quotes: 'a=1,b=[1,2]' -> ['a=1', 'b=[1,2]']."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in s:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return [p for p in (x.strip() for x in parts) if p]


def _literal(v: str) -> Any:
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return ast.literal_eval(v)
    except (ValueError, SyntaxError):
        return v
