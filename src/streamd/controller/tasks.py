"""Two trio helpers of the control plane: a nursery that re-raises a lone exception as
itself, and ``bounded``, a store call with a deadline that fails as the store's own error.

trio wraps whatever leaves a nursery in an ExceptionGroup, the body's own exceptions included.
The control plane's background tasks end only by raising one typed error (NotControllerError,
NodeLostError) or by being cancelled, so a group of one carries exactly that error, and callers
can catch it by its type. True groups (two tasks failed at once) are kept as they are.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import TypeVar

import trio

from streamd_client.errors import MetadataUnavailableError

T = TypeVar("T")


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


async def bounded(what: str, timeout_s: float, call: Awaitable[T]) -> T:
    """``await call`` within ``timeout_s``; over it, MetadataUnavailableError naming ``what``.

    The etcd client bounds its own calls; this bounds every store (the embedded one too) and
    every call the same way, so no control-plane wait is unbounded.
    """
    with trio.move_on_after(timeout_s):
        return await call
    raise MetadataUnavailableError(f"the metadata store did not answer {what} in {timeout_s} s")
