"""scenarios/crash_restart.py from the tests: a short round always, a long one with --slow.

The scenario lives in scenarios/ (a runnable script, not a package), so it is loaded by path.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "crash_restart.py"


def load_scenario() -> ModuleType:
    spec = importlib.util.spec_from_file_location("crash_restart_scenario", SCENARIO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


async def test_short_crash_restart_round(tmp_path: Path) -> None:
    scenario = load_scenario()
    options = scenario.ScenarioOptions(
        seconds=4.0, kills=2, rate=10_000, seed=1, data_dir=tmp_path / "crash"
    )
    result = await scenario.run_scenario(options)
    report = result.report
    assert report.ok, report.summary()
    assert result.kills == 2
    assert report.acked > 10_000, report.summary()
    assert report.observed > 0, "the tailing readers saw nothing"


@pytest.mark.slow
async def test_long_crash_restart_round(tmp_path: Path) -> None:
    scenario = load_scenario()
    options = scenario.ScenarioOptions(
        seconds=40.0, kills=12, rate=20_000, seed=None, data_dir=tmp_path / "crash"
    )
    result = await scenario.run_scenario(options)
    assert result.report.ok, result.report.summary()


def test_command_line_exit_status(tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            str(SCENARIO),
            "--seconds",
            "2",
            "--kills",
            "1",
            "--rate",
            "2000",
            "--json",
            "--data-dir",
            str(tmp_path / "cli"),
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr.decode()[-3000:]
    assert b'"ok": true' in completed.stdout
