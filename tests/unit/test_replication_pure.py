"""The replication core is sans-I/O: it imports no trio, no sockets, no files, no clocks.

Scans the imports of every module of src/streamd/replication/ (and of the modules it reaches
inside streamd) with ``ast``, so a stray ``import trio`` fails here before it can make the core
impossible to simulate.
"""

from __future__ import annotations

import ast
from pathlib import Path

import streamd

SRC = Path(streamd.__file__).parent
FORBIDDEN = {
    "trio",
    "anyio",
    "asyncio",
    "socket",
    "selectors",
    "select",
    "ssl",
    "os",
    "io",
    "pathlib",
    "shutil",
    "tempfile",
    "threading",
    "multiprocessing",
    "subprocess",
    "time",
    "random",
}
# Modules outside the package that the core may import: pure values and tables.
ALLOWED_INSIDE = {"streamd.storage.logstore", "streamd.storage.producers", "streamd_client.errors"}


def imports_of(path: Path, package: str) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
                found.add(name)
            else:
                assert node.module is not None
                found.add(node.module)
    return found


# The I/O around the core lives beside it: the trio driver, the transport, the meta file, the
# metrics, and the wire codec (sans-I/O, but it reuses the file log's batch encoding; the
# import-graph test keeps it free of trio).
AROUND_THE_CORE = {"driver.py", "transport.py", "metafile.py", "telemetry.py", "codec.py"}


def test_replication_core_imports_no_io() -> None:
    modules = sorted(p for p in (SRC / "replication").glob("*.py") if p.name not in AROUND_THE_CORE)
    assert len(modules) >= 8
    for path in modules:
        for name in imports_of(path, "streamd.replication"):
            top = name.split(".")[0]
            assert top not in FORBIDDEN, f"{path.name} imports {name}"
            if name.startswith(("streamd.", "streamd_client.")) and not name.startswith(
                "streamd.replication"
            ):
                assert name in ALLOWED_INSIDE, f"{path.name} imports {name}"


def test_the_modules_the_core_reaches_are_pure_too() -> None:
    for name in ALLOWED_INSIDE - {"streamd_client.errors"}:
        path = SRC / (name.removeprefix("streamd.").replace(".", "/") + ".py")
        for imported in imports_of(path, name.rsplit(".", 1)[0]):
            assert imported.split(".")[0] not in FORBIDDEN, f"{name} imports {imported}"
    errors = SRC.parent / "streamd_client" / "errors.py"
    for imported in imports_of(errors, "streamd_client"):
        assert imported.split(".")[0] not in FORBIDDEN, f"errors imports {imported}"


def test_the_scan_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import trio\nfrom ..storage import log\n")
    assert imports_of(bad, "streamd.replication") == {"trio", "streamd.storage"}
