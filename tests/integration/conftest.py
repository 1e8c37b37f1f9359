"""Fixtures for tests against real ``streamd serve`` processes over real TCP.

``server`` is one process shared by a test module (validation and round-trip tests do not
damage it); ``fresh_server`` is a process of the test's own, for tests that kill, corrupt or
restart it. Both are ``streamd.testing.ServerProcess`` and are stopped (SIGTERM, then SIGKILL)
when their scope ends, pass or fail. A failing test prints the tail of its servers' logs.

Async tests here are either ``anyio`` tests (run on asyncio *and* trio through the
``anyio_backend`` fixture below) or plain trio tests (pytest-trio's trio_mode); see
tests/conftest.py for how the two plugins are kept apart.
"""

from __future__ import annotations

import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from streamd.testing import ServerProcess


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server shared by the module's tests (fsync always)."""
    with ServerProcess(tmp_path_factory.mktemp("shared") / "data") as process:
        yield process


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of this test's own, over ``tmp_path / "data"``."""
    with ServerProcess(tmp_path / "data") as process:
        yield process


@pytest.fixture
def endpoint(server: ServerProcess) -> str:
    return server.endpoint


@pytest.fixture
def stream_name() -> str:
    """A stream name no other test uses."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if call.when == "call" and report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, ServerProcess):
                report.sections.append((f"server log ({value.data_dir})", value.log_tail()))
    return report
