"""Project templates for ``corolla new NAME --template T``.

Each template is a folder holding a complete project: ``pyproject.toml``, ``README.md`` and a
package folder named ``{{module}}``. `render` copies one, replacing ``{{name}}`` (the project
name) and ``{{module}}`` (its Python package name) in file contents and paths.
"""

from __future__ import annotations

import keyword
import re
import shutil
from pathlib import Path

TEMPLATES = ("numpy", "sklearn", "pytorch")

_ROOT = Path(__file__).parent
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")  # a valid distribution name
_SKIP = {"__pycache__", ".DS_Store"}


def module_name(name: str) -> str:
    """The package name for a project: lowercased, non-alphanumerics replaced by ``_``."""
    module = re.sub(r"[^a-z0-9]", "_", name.lower())
    if module[:1].isdigit():
        module = "_" + module
    if keyword.iskeyword(module):
        module += "_"
    return module


def template_dir(template: str) -> Path:
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; choose one of: {', '.join(TEMPLATES)}")
    return _ROOT / template


def render(template: str, dest: Path | str, name: str) -> Path:
    """Create the project `name` from `template` in the folder `dest`; returns `dest`.

    `dest` must not exist or be empty, so nothing is ever overwritten (else `ValueError`).
    """
    src = template_dir(template)
    if not _NAME.match(name):
        raise ValueError(
            f"invalid project name {name!r}: use letters, digits, '-', '_' and '.', "
            f"starting and ending with a letter or digit (e.g. 'my-project')"
        )
    dest = Path(dest)
    if dest.exists():
        if not dest.is_dir():
            raise ValueError(f"{dest} exists and is not a folder; choose another destination")
        if any(dest.iterdir()):
            raise ValueError(f"{dest} already exists and is not empty; choose another destination or remove it first")
    subs = {"{{name}}": name, "{{module}}": module_name(name)}

    def fill(text: str) -> str:
        for k, v in subs.items():
            text = text.replace(k, v)
        return text

    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if any(part in _SKIP for part in rel.parts) or path.suffix == ".pyc":
            continue
        target = dest / fill(rel.as_posix())
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            target.write_bytes(data)
        else:
            target.write_bytes(fill(text).encode("utf-8"))
        shutil.copymode(path, target)
    return dest
