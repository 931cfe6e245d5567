"""Regenerate the example projects from the bundled templates (their one source of truth).

    python examples/regenerate.py           # rewrite examples/<name>/ from src/corolla/templates/
    python examples/regenerate.py --check   # exit 1 if any example differs from its template

Edit the templates, not the examples, then run this and commit both.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from corolla.templates import render

HERE = Path(__file__).resolve().parent

#: example folder -> template
EXAMPLES = {
    "numpy-linreg": "numpy",
    "sklearn-digits": "sklearn",
    "pytorch-digits": "pytorch",
}

_IGNORE = ["__pycache__", ".corolla", ".DS_Store"]


def differences(a: Path, b: Path) -> list[str]:
    """Relative paths that differ between two trees (ignoring caches and run outputs)."""
    out: list[str] = []

    def walk(cmp: filecmp.dircmp, prefix: str) -> None:
        out.extend(prefix + n for n in cmp.left_only + cmp.right_only + cmp.funny_files)
        _, mismatch, errors = filecmp.cmpfiles(cmp.left, cmp.right, cmp.common_files, shallow=False)
        out.extend(prefix + n for n in mismatch + errors)
        for name, sub in cmp.subdirs.items():
            walk(sub, f"{prefix}{name}/")

    walk(filecmp.dircmp(a, b, ignore=_IGNORE), "")
    return sorted(out)


def check(root: Path = HERE) -> list[str]:
    """Every difference between the committed examples and fresh renders of their templates."""
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, template in EXAMPLES.items():
            fresh = render(template, Path(tmp) / name, name)
            if not (root / name).is_dir():
                problems.append(f"{name}/ is missing")
                continue
            problems.extend(f"{name}/{p}" for p in differences(root / name, fresh))
    return problems


def regenerate(root: Path = HERE) -> None:
    for name, template in EXAMPLES.items():
        dest = root / name
        with tempfile.TemporaryDirectory() as tmp:
            fresh = render(template, Path(tmp) / name, name)
            if dest.exists():  # replace everything but local run outputs (.corolla/)
                for child in dest.iterdir():
                    if child.name != ".corolla":
                        shutil.rmtree(child) if child.is_dir() else child.unlink()
            shutil.copytree(fresh, dest, dirs_exist_ok=True)
        print(f"examples/{name}  <-  template {template!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report examples that differ from their template")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for p in problems:
            print(f"out of date: examples/{p}")
        if problems:
            print("run `python examples/regenerate.py` and commit the result", file=sys.stderr)
        return 1 if problems else 0
    regenerate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
