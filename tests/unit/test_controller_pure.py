"""Placement, the decision table and the keyspace are pure: no trio, no I/O, no clock, no
randomness. Scans their imports (and those of what they reach inside streamd) with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

import streamd

SRC = Path(streamd.__file__).parent
FORBIDDEN = {"trio", "anyio", "asyncio", "socket", "select", "os", "io", "pathlib", "shutil"}
FORBIDDEN |= {"tempfile", "threading", "subprocess", "time", "random", "secrets", "httpx"}
PURE = {
    "streamd.controller.placement": SRC / "controller" / "placement.py",
    "streamd.controller.decisions": SRC / "controller" / "decisions.py",
    "streamd.meta.keys": SRC / "meta" / "keys.py",
}
# What they may reach inside streamd: each other, and the metadata errors (plain classes).
ALLOWED_INSIDE = {*PURE, "streamd.meta.errors"}


def imports_of(path: Path, package: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            else:
                assert node.module is not None
                found.add(node.module)
    return found


def test_placement_decisions_and_keys_import_no_io() -> None:
    for name, path in PURE.items():
        for imported in imports_of(path, name.rsplit(".", 1)[0]):
            assert imported.split(".")[0] not in FORBIDDEN, f"{name} imports {imported}"
            if imported.startswith("streamd"):
                assert imported in ALLOWED_INSIDE, f"{name} imports {imported}"
    errors = SRC / "meta" / "errors.py"
    for imported in imports_of(errors, "streamd.meta"):
        assert imported.split(".")[0] not in FORBIDDEN, f"meta.errors imports {imported}"


def test_the_scan_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import trio\nfrom ..meta import etcd\n")
    assert imports_of(bad, "streamd.controller") == {"trio", "streamd.meta"}
