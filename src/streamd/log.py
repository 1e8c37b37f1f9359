"""structlog set-up: human-readable lines on a terminal, JSON lines when asked.

Every module logs with ``structlog.get_logger(__name__)`` and an event name like
``shard.commit`` plus fields; this module only decides how those lines are rendered.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


class _StderrLogger:
    """Writes each line to whatever ``sys.stderr`` is *now*: a factory that bound the stream
    at configure time would keep writing to one a test harness has since closed."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def _stderr_logger(*args: Any) -> _StderrLogger:
    return _StderrLogger()


def configure(log_format: str = "console", level: str = "info") -> None:
    """Route structlog to stderr in the chosen format. Idempotent."""
    level_number = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    renderer: structlog.types.Processor
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level_number),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
