"""The README's tour (every block marked ``<!-- tour -->``) run top to bottom, twice, against a
real server: scenarios/readme_tour.py reads the blocks from README.md itself, so the README and
what is tested cannot drift apart. Also the harness's own rules: which blocks it takes, how a
console block splits into commands and shown output, and how output is compared.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from streamd.testing import ServerProcess

TOUR = Path(__file__).resolve().parents[2] / "scenarios" / "readme_tour.py"


@pytest.fixture(scope="module")
def tour() -> ModuleType:
    spec = importlib.util.spec_from_file_location("readme_tour_scenario", TOUR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_every_console_and_python_block_of_the_readme_is_marked(tour: ModuleType) -> None:
    text = tour.README.read_text()
    assert [b.line for b in tour.unmarked_blocks(text)] == []
    blocks = tour.tour_blocks(text)
    assert len(blocks) >= 6 and {b.language for b in blocks} == {"console", "python"}
    commands = [s.command for b in blocks if b.language == "console" for s in tour.console_steps(b)]
    # The sections the tour must cover: streams, put/read, follow, resharding, clean-up.
    for needle in ("stream create clicks", "put clicks", "--follow &", "shard split clicks"):
        assert any(needle in c for c in commands), needle
    assert "stream delete clicks" in commands[-1]


def test_console_steps_and_output_rules(tour: ModuleType) -> None:
    block = tour.Block("console", "$ a &   # comment\n$ b\nout 1\n...\nout 9\n$ c", 10, "tour")
    steps = tour.console_steps(block)
    assert [(s.command, s.expected, s.line, s.background) for s in steps] == [
        ("a &   # comment", (), 10, True),
        ("b", ("out 1", "...", "out 9"), 11, False),
        ("c", (), 15, False),
    ]
    match = tour.output_matches
    assert match(("x", "...", "z"), ["x", "z"]) and match(("x", "...", "z"), ["x", "1", "2", "z"])
    assert not match(("x", "z"), ["x", "y", "z"]) and not match(("x",), ["x", "y"])
    assert match(('{"t": "2025-01-01T12:00:00.123Z"}',), ['{"t": "2026-12-03T12:26:02.387Z"}'])
    assert not match(("put 5 record(s)",), ["put 6 record(s)"])


def test_the_readme_tour_runs_twice(tour: ModuleType, tmp_path: Path) -> None:
    blocks = tour.tour_blocks(tour.README.read_text())
    with ServerProcess(tmp_path / "data", kinesis=True) as server:
        target = tour.Target(server.endpoint, server.kinesis_endpoint, tmp_path)
        for run in (1, 2):
            failures = tour.run_tour(blocks, target)
            assert not failures, f"run {run}:\n" + "\n\n".join(map(str, failures))
