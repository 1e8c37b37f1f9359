"""The module graph of src/ has no import circle, and its arrows point the architecture's way.

Every module under src/ is parsed with ``ast`` (nothing is imported), and every import counts:
top level, inside functions, and under ``if TYPE_CHECKING:`` (a circle of type-only imports is
still a circle of knowledge). ``from pkg import name`` is an edge to ``pkg.name`` when that is a
module, else to ``pkg`` (a name from a package face depends on the face). A failure prints
the circle.

The arrows (docs/design.md, "Module map"): the client never imports the server; storage knows
nothing of the front ends, the node or the CLI; front ends never import the node or the CLI;
the replication core and the sans-I/O codecs import no trio.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

# Pure modules: state machines and codecs run without an event loop (STYLE.md, 1 and 2).
SANS_IO = (
    # The replication core; its trio driver, transport and meta file (driver.py, transport.py,
    # metafile.py, telemetry.py) are the I/O around it and are not listed.
    "streamd.replication.replica",
    "streamd.replication.messages",
    "streamd.replication.roles",
    "streamd.replication.leading",
    "streamd.replication.epochs",
    "streamd.replication.quorum",
    "streamd.replication.meta",
    "streamd.replication.errors",
    "streamd.replication.committer",
    "streamd.replication.codec",
    "streamd_client.wire",
    "streamd_client.batch",
    "streamd_client.strict_cbor",
    "streamd.frontends.kinesis.cbor",
    "streamd.frontends.kinesis.codec",
    "streamd.frontends.kinesis.eventstream",
    "streamd.frontends.kinesis.http_wire",
    "streamd.frontends.kinesis.h2_wire",
    "streamd.meta.etcd_codec",
    "streamd.groups.coordinator",
    "streamd.groups.state",
    "streamd.groups.assign",
    "streamd.cluster.reshard_fence",
    "streamd.quotas",
    "streamd.scaling",
)
ASYNC_LIBRARIES = ("trio", "anyio")


def module_files(root: Path) -> dict[str, Path]:
    """Every module under ``root`` by dotted name (a package by its ``__init__.py``)."""
    modules: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imports(module: str, path: Path) -> Iterable[tuple[str, str | None]]:
    """Every import of the module as (absolute module name, imported name or None)."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            yield from ((base, alias.name) for alias in node.names)


def imported_names(module: str, path: Path) -> set[str]:
    """The dotted names the module's imports refer to (``trio``, ``streamd.engine``)."""
    return {base if name is None else f"{base}.{name}" for base, name in _imports(module, path)}


def _nearest(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def build_graph(root: Path) -> dict[str, set[str]]:
    """module -> the modules under ``root`` it imports.

    ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``
    (a function from a package face is an edge to the face). Importing a submodule runs its
    parent packages too, but that is not an edge the importer chose, so it is not counted.
    """
    modules = module_files(root)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets: set[str] = set()
        for base, name in _imports(module, path):
            full = base if name is None else f"{base}.{name}"
            target = full if full in modules else _nearest(base, modules)
            if target is not None:
                targets.add(target)
        graph[module] = targets - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def imports_of(root: Path, prefix: str) -> dict[str, set[str]]:
    """For each module under ``prefix``: every dotted name it imports."""
    return {
        module: imported_names(module, path)
        for module, path in module_files(root).items()
        if _under(module, [prefix])
    }


def _under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


# -- the tree itself -----------------------------------------------------------------------------


def test_src_has_no_import_circle() -> None:
    cycle = find_cycle(build_graph(SRC))
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_client_never_imports_the_server() -> None:
    bad = {
        (module, name)
        for module, names in imports_of(SRC, "streamd_client").items()
        for name in names
        if _under(name, ["streamd"])
    }
    assert not bad, bad


def test_storage_knows_nothing_of_front_ends_node_or_cli() -> None:
    graph = build_graph(SRC)
    above = ["streamd.frontends", "streamd.node", "streamd.cli", "streamd.engine"]
    bad = {
        (module, target)
        for module, targets in graph.items()
        if _under(module, ["streamd.storage"])
        for target in targets
        if _under(target, above)
    }
    assert not bad, bad


def test_front_ends_never_import_the_node_or_the_cli() -> None:
    graph = build_graph(SRC)
    bad = {
        (module, target)
        for module, targets in graph.items()
        if _under(module, ["streamd.frontends"])
        for target in targets
        if _under(target, ["streamd.node", "streamd.cli", "streamd.bench"])
    }
    assert not bad, bad


@pytest.mark.parametrize("prefix", SANS_IO)
def test_pure_modules_import_no_event_loop(prefix: str) -> None:
    modules = imports_of(SRC, prefix)
    assert modules, f"no module {prefix} under src/ (renamed? update SANS_IO)"
    bad = {
        (module, name)
        for module, names in modules.items()
        for name in names
        if _under(name, ASYNC_LIBRARIES)
    }
    assert not bad, bad


# -- the check bites -----------------------------------------------------------------------------


def _plant(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_planted_circle_is_found_and_printed(tmp_path: Path) -> None:
    root = _plant(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from .b import thing\n",
            "pkg/b.py": "def thing(): pass\n\ndef later():\n    from pkg import c\n",
            "pkg/c.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n"
            ),
        },
    )
    assert find_cycle(build_graph(root)) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]


def test_a_tree_without_a_circle_passes(tmp_path: Path) -> None:
    root = _plant(
        tmp_path,
        {
            "pkg/__init__.py": "from .a import x\nfrom . import b\n",
            "pkg/a.py": "from . import b\nx = b.y\n",
            "pkg/b.py": "import os\ny = 1\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/c.py": "from .. import a\nfrom ..b import y\n",
        },
    )
    graph = build_graph(root)
    assert find_cycle(graph) is None
    assert graph["pkg"] == {"pkg.a", "pkg.b"}
    assert graph["pkg.sub.c"] == {"pkg.a", "pkg.b"}  # not the parents it runs


def test_a_function_from_the_package_face_is_an_edge_to_the_face(tmp_path: Path) -> None:
    """``from pkg import Client`` inside pkg.producer, with pkg/__init__ importing the
    producer, is a circle (the face is a module too)."""
    root = _plant(
        tmp_path,
        {
            "pkg/__init__.py": "from .producer import Producer\nClient = object\n",
            "pkg/producer.py": "def f():\n    from pkg import Client\n\nProducer = 1\n",
        },
    )
    assert find_cycle(build_graph(root)) == ["pkg", "pkg.producer", "pkg"]
