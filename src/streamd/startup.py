"""What can stop ``streamd serve`` before it is ready, said in one line.

Every failure before the ready line that an operator can fix (an address already taken, a data
dir that is a file, unwritable, or held by another server, a damaged metadata file) is raised as
a ``StartupError``: a one-line message that names the thing (the address, the directory) and the
flag that changes it. ``streamd serve`` prints it as ``error: ...`` and exits 2, the status of a
bad command line, never with a traceback. Anything else before the ready line is a bug and keeps
its traceback.

Why one type: the checks live where the resource is opened (the data dir here, the listeners in
node.py, the fd limit in the engine), and the CLI has one place that turns them into a line and
an exit status. Why translated here: the OSError of a bind says "Address already in use" and not
which of the three listeners, nor what to do about it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import tempfile
from pathlib import Path
from typing import Final

LOCK_FILE: Final = ".lock"
_PID_BYTES_MAX: Final = 32


class StartupError(Exception):
    """The server cannot start; ``str()`` is one line for the operator (no traceback)."""

    def __init__(self, message: str) -> None:
        assert "\n" not in message, message
        super().__init__(message)


# -- listeners --------------------------------------------------------------------------------

_BIND_REASONS: Final = {
    errno.EADDRINUSE: "address already in use (another server, or another program, has it)",
    errno.EADDRNOTAVAIL: "not an address of this machine",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
}


def bind_error(flag: str, address: str, exc: OSError, *, hint: str = "") -> StartupError:
    """The StartupError for a listener that could not be bound at ``address``."""
    if isinstance(exc, socket.gaierror):
        reason = f"cannot resolve the host ({exc.strerror or exc})"
    else:
        reason = _BIND_REASONS.get(exc.errno or 0) or str(exc.strerror or exc)
    advice = hint or f"choose another with {flag} HOST:PORT (port 0 picks a free one)"
    return StartupError(f"{flag} {address}: {reason}; {advice}")


# -- the data directory -----------------------------------------------------------------------


def prepare_data_dir(path: Path) -> None:
    """Create ``path`` (and its parents) if missing and check it is a writable directory.

    Raises StartupError.
    """
    if path.exists() and not path.is_dir():
        raise StartupError(f"--data-dir {path}: exists and is not a directory")
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)  # the records are the server's alone
    except OSError as exc:
        raise StartupError(f"--data-dir {path}: cannot create it: {exc.strerror or exc}") from None
    try:  # the real test: permissions, a read-only mount, ACLs (os.access knows only some)
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=path)
    except OSError as exc:
        raise StartupError(
            f"--data-dir {path}: cannot write in it: {exc.strerror or exc}"
        ) from None
    os.close(fd)
    os.unlink(probe)


def lock_data_dir(path: Path) -> int:
    """Hold an exclusive lock on ``path/.lock`` for the process's life (one server per data
    dir) and write our pid in it, so the next server can say who holds it. Returns the fd.

    Raises StartupError (in use, or the lock file cannot be opened).
    """
    lock_path = path / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StartupError(f"--data-dir {path}: cannot open {lock_path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _read_pid(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
            by = f" (pid {holder})" if holder else ""
            raise StartupError(
                f"--data-dir {path}: in use by another streamd server{by}; stop it, or give "
                "this one another --data-dir"
            ) from None
        raise StartupError(f"--data-dir {path}: cannot lock {lock_path}: {exc.strerror}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, _PID_BYTES_MAX, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
