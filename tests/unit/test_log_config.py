"""structlog set-up: lines go to the stderr of the moment, not the one at configure time."""

from __future__ import annotations

import io
import sys

import pytest
import structlog

from streamd import log


def test_lines_follow_sys_stderr_after_configure(monkeypatch: pytest.MonkeyPatch) -> None:
    saved = structlog.get_config()
    first, second = io.StringIO(), io.StringIO()
    try:
        monkeypatch.setattr(sys, "stderr", first)
        log.configure("json", "info")
        first.close()  # what pytest does to a finished test's captured stream
        monkeypatch.setattr(sys, "stderr", second)
        structlog.get_logger("t").info("after.swap", n=1)
    finally:
        structlog.configure(**saved)
    assert '"event": "after.swap"' in second.getvalue()
