"""The package's dependencies point one way: building blocks below the stages, a stage never importing a later
one, the scripts' flags (mllib.cli) only in scripts; every key the project writes spelled in mllib/layout.py."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = {"layout", "images", "augment", "atomic", "checks", "perprocess", "tflib"}
# what each part may not import (a later stage, or the scripts' level)
FORBIDDEN = {
    "store": {"get", "labels", "sources", "records", "loaders", "training", "cli"},
    "labels": {"get", "sources", "records", "loaders", "training", "cli"},
    "sources": {"get", "records", "loaders", "training", "cli"},
    "records": {"loaders", "training", "cli"},
    "loaders": {"training", "get", "cli"},
    "training": {"get", "cli"},
    "get": {"labels", "sources", "records", "loaders", "training", "cli"},
    "testing": {"get", "labels", "sources", "records", "loaders", "training", "cli"},
    **{b: {"get", "store", "labels", "sources", "records", "loaders", "training", "testing", "cli"} for b in BLOCKS},
}


def _imports(path: Path) -> set[str]:
    """The first component below mllib of every mllib module the file imports."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "mllib":
                if len(parts) > 1:
                    out.add(parts[1])
                else:
                    out.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("mllib."))
    return out


def test_dependencies_point_one_way():
    wrong = []
    for path in sorted((ROOT / "mllib").rglob("*.py")):
        rel = path.relative_to(ROOT / "mllib")
        part = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        for target in _imports(path) & FORBIDDEN.get(part, set()):
            wrong.append(f"mllib/{rel} imports mllib.{target}")
    assert not wrong, "\n".join(wrong)


def test_store_keys_are_spelled_only_in_layout():
    """No module but layout.py writes a literal key of the store's own folders or files."""
    key = re.compile(r"""["'](?:[^"'\s]*/)?(?:\.shards/|\.manifests/|trainingsets/|models/|runs/|description\.json|"""
                     r"""checkpoint\.pt|model\.keras|training\.json|tests\.json)""")
    found = []
    for path in sorted((ROOT / "mllib").rglob("*.py")):
        if path.name == "layout.py" or path.parent.name == "commands":  # the commands' help names the keys
            continue
        tree = ast.parse(path.read_text())
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, ast.Module | ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef) and n.body
                and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                for m in key.finditer(repr(node.value)):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {m.group(0)}")
    assert not found, "\n".join(found)


def test_every_subpackage_is_packaged():
    """pyproject.toml lists its packages: a sub-package missing there is missing from every wheel and image."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "mllib").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
