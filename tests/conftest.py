"""Suite-wide pytest set-up: the ``--slow`` flag, and anyio tests living beside pytest-trio.

``--slow`` runs the tests marked ``slow`` (long fault rounds); without it they are skipped, so
``make test`` stays within a few minutes.

``etcd`` is one real etcd process for the whole session (streamd.testing.etcd).

pytest-trio's ``trio_mode`` marks *every* async test ``trio`` and wraps it to run under
``trio.run``. A test marked ``anyio`` (run once per ``anyio_backend``, asyncio and trio) must not
get that wrapper, or its asyncio run would silently be a trio run. So after pytest-trio has
marked the items, the ``trio`` mark is taken off every ``anyio`` test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streamd.testing.etcd import EtcdProcess


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--slow",
        action="store_true",
        default=False,
        help="also run the long fault rounds (tests marked slow)",
    )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = config.getoption("--slow")
    skip_slow = pytest.mark.skip(reason="long fault round; run with --slow")
    for item in items:
        if item.get_closest_marker("anyio") is not None:
            item.own_markers[:] = [m for m in item.own_markers if m.name != "trio"]
        if not run_slow and item.get_closest_marker("slow") is not None:
            item.add_marker(skip_slow)


@pytest.fixture(scope="session")
def etcd() -> Iterator[EtcdProcess]:
    """One real etcd for the whole session (tests keep apart by key prefix, never by revision).

    Fails, with how to install etcd, where etcd is missing: never a silent skip.
    """
    with EtcdProcess() as process:
        yield process
