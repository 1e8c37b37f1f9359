"""A trio nursery that re-raises a lone exception as itself.

trio wraps whatever leaves a nursery in an ExceptionGroup, the body's own exceptions included.
The control plane's background tasks end only by raising one typed error (NotControllerError,
NodeLostError) or by being cancelled, so a group of one carries exactly that error, and callers
can catch it by its type. True groups (two tasks failed at once) are kept as they are.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


@asynccontextmanager
async def open_nursery() -> AsyncIterator[trio.Nursery]:
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            lone = group.exceptions[0]
            raise lone from lone.__cause__
        raise
