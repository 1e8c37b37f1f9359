"""A task group for a library's background tasks, around user code.

anyio (like trio's strict mode) wraps whatever leaves a task group in an ExceptionGroup, the
body's own exceptions included. The client's background tasks (a connection's reader and
writer, a producer's senders) never raise streamd errors: they turn failures into answers, so
an exception group holding a single exception carries the body's (or a bug's) exception, and
users of ``async with connect(...)`` would otherwise have to catch ``StreamNotFoundError`` as
``ExceptionGroup``. This unwraps exactly that case and keeps true groups as they are.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc


@asynccontextmanager
async def background_task_group() -> AsyncIterator[anyio.abc.TaskGroup]:
    """``anyio.create_task_group()``, re-raising a lone exception as itself."""
    try:
        async with anyio.create_task_group() as task_group:
            yield task_group
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            lone = group.exceptions[0]
            raise lone from lone.__cause__
        raise
