"""Request bodies decoded off the event loop: small ones inline, large ones in worker processes.

Why processes and not threads: decoding is CPU work under the GIL. json.loads of a 6.5 MiB body
holds the GIL in C for its whole run (16 ms for a real PutRecords, far more for a hostile one),
and the pure-Python CBOR decoder in a thread makes the event loop wait for the GIL at every
switch interval (5 ms per loop iteration). Measured on this 2-core machine, the event loop's
1 ms timer lagged up to 141 ms beside a thread decoding a hostile JSON body, and 1.2 to 1.6 s
when the decode ran inline; with a worker process it stays near 0.2 ms (p50), a few ms at p99.

So a body of at most ``inline_bytes_max`` (16 KiB: a normal PutRecord, decoded in well under a
millisecond even when hostile) is decoded on the loop, and so is a large CBOR body of at most
``INLINE_CBOR_ITEMS_MAX`` items (a few hundred large records, as the KPL sends: 4.5 ms for 4.9
MiB, mostly copying blobs; the attempt stops at that many items, 3.7 ms at worst, and hands the
body on). Any other large body goes to a pool of ``workers`` processes (trio-parallel; spawned
lazily, kept while busy, retired when idle or when one grew past ``worker_rss_bytes_max``, so
memory a hostile body made a worker take is given back to the system). The body goes to the
worker, and the pickled result comes back, as files in a private spool directory on tmpfs
(``/dev/shm``), not through trio-parallel's pipe: a 4.9 MiB body took 15 ms each way through the
pipe (64 KiB at a time, a loop wake-up each), 1 to 2 ms as a file; the loop only unpickles the
result (about a memcpy). At most ``workers`` decodes run at once (a CapacityLimiter); each is
bounded by ``timeout_s`` and killed on timeout or cancellation. Workers run at a lower CPU
priority (nice 10) than the event loop. The worker returns a bounded result: a decoded document
with more than ``ITEMS_MAX`` members (no Kinesis request has more than a few thousand) is
refused there, so the loop never unpickles millions of objects.

Only ``CodecError`` (answered as SerializationException) comes out of ``decode`` for a bad body;
a worker that dies is an internal failure.
"""

from __future__ import annotations

import os
import pickle
import secrets
import shutil
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Final

import trio
import trio_parallel

from .codec import CborTooManyItemsError, CodecError, Protocol, decode_request

ITEMS_MAX: Final = 65_536  # members of all maps and lists in one request (PutRecords: ~3,500)
INLINE_BYTES_MAX_DEFAULT: Final = 16 * 1024
# A large CBOR body is first tried inline with this many items at most: a PutRecords of a few
# hundred large records (what the KPL and the Java SDK send) has about 2,500 and decodes in a few
# ms, mostly copying its blobs; one with more items goes to a worker.
INLINE_CBOR_ITEMS_MAX: Final = 4096
WORKER_RSS_BYTES_MAX: Final = 256 * 1024 * 1024
WORKER_IDLE_TIMEOUT_S: Final = 300.0
WORKER_NICENESS: Final = 10
_SPOOL_PARENTS: Final = ("/dev/shm",)  # tmpfs where there is one, else the temp dir


def default_workers() -> int:
    """One fewer than the CPUs (the event loop keeps one), at least one."""
    return max(1, (os.cpu_count() or 2) - 1)


class BodyDecoder:
    """Decodes request bodies; ``async with decoder.running():`` around the serving."""

    def __init__(
        self,
        *,
        workers: int | None = None,
        inline_bytes_max: int = INLINE_BYTES_MAX_DEFAULT,
        timeout_s: float = 10.0,
    ) -> None:
        self.workers = workers or default_workers()
        self.inline_bytes_max = inline_bytes_max
        self.timeout_s = timeout_s
        self._limiter = trio.CapacityLimiter(self.workers)
        self._context: Any = None  # a trio_parallel.WorkerContext while running
        self._stack: AsyncExitStack | None = None
        self._spool: Path | None = None

    async def __aenter__(self) -> BodyDecoder:
        stack = AsyncExitStack()
        spool = Path(tempfile.mkdtemp(prefix="streamd-decode-", dir=_spool_parent()))  # 0700
        stack.callback(shutil.rmtree, spool, ignore_errors=True)
        self._context = await stack.enter_async_context(
            trio_parallel.open_worker_context(
                idle_timeout=WORKER_IDLE_TIMEOUT_S,
                init=_lower_priority,
                retire=_worker_grew_too_big,
            )
        )
        self._stack, self._spool = stack, spool
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        stack, self._stack, self._context, self._spool = self._stack, None, None, None
        if stack is not None:
            with trio.CancelScope(shield=True):
                await stack.aclose()

    async def decode(self, protocol: Protocol, body: bytes) -> dict[str, Any]:
        """The request map (as ``codec.decode_request``). Raises CodecError."""
        if len(body) <= self.inline_bytes_max:
            return decode_request(protocol, body)
        if protocol is Protocol.CBOR:
            try:
                return decode_request(protocol, body, cbor_items_max=INLINE_CBOR_ITEMS_MAX)
            except CborTooManyItemsError:
                pass  # many small items: the costly kind, decoded by a worker
        context, spool = self._context, self._spool
        if context is None or spool is None:
            raise RuntimeError("BodyDecoder used outside 'async with'")
        name = secrets.token_hex(8)
        body_path, result_path = spool / f"{name}.body", spool / f"{name}.result"
        try:
            with trio.move_on_after(self.timeout_s):
                await trio.to_thread.run_sync(_write_new, body_path, body)
                await context.run_sync(
                    decode_file,
                    protocol,
                    str(body_path),
                    str(result_path),
                    limiter=self._limiter,
                    kill_on_cancel=True,
                )
                result = await trio.to_thread.run_sync(result_path.read_bytes)
                doc: dict[str, Any] = pickle.loads(result)
                return doc
        finally:
            body_path.unlink(missing_ok=True)
            result_path.unlink(missing_ok=True)
        raise CodecError(f"the body took longer than {self.timeout_s:g} s to decode")


def decode_file(protocol: Protocol, body_path: str, result_path: str) -> None:
    """Runs in a worker: decode the body in ``body_path`` and write the pickled request map to
    ``result_path``. Raises CodecError."""
    doc = decode_bounded(protocol, Path(body_path).read_bytes())
    _write_new(Path(result_path), pickle.dumps(doc, protocol=pickle.HIGHEST_PROTOCOL))


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _spool_parent() -> str | None:
    for parent in _SPOOL_PARENTS:
        if os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK):
            return parent
    return None


def decode_bounded(protocol: Protocol, body: bytes) -> dict[str, Any]:
    """``decode_request`` plus the bound on members (runs in a worker). Raises CodecError."""
    doc = decode_request(protocol, body)
    _count_members(doc, ITEMS_MAX)
    return doc


def _count_members(doc: dict[str, Any], budget: int) -> None:
    pending: list[Any] = [doc]
    while pending:
        value = pending.pop()
        members = value.values() if isinstance(value, dict) else value
        budget -= len(members)
        if budget < 0:
            raise CodecError(f"the request has more than {ITEMS_MAX} members")
        pending.extend(v for v in members if isinstance(v, dict | list))


def _lower_priority() -> None:
    """trio-parallel's ``init`` hook, run in each new worker: decoding is bulk work, so on a
    busy machine the event loop (which answers every other request) gets the CPU first."""
    os.nice(WORKER_NICENESS)


def _worker_grew_too_big() -> bool:
    """trio-parallel's ``retire`` hook, run in the worker after each job."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return False
    return resident_pages * os.sysconf("SC_PAGE_SIZE") > WORKER_RSS_BYTES_MAX
