"""Small disks for fault tests: a tmpfs mounted at a directory, filled to the last byte, freed.

Mounting needs root (CI runs as root). ``mount_tmpfs`` raises ``DiskUnavailable`` (with mount's
own message) where it cannot mount; callers skip or refuse, saying so.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

FILLER_NAME = "disk-filler"


class DiskUnavailable(Exception):
    """A tmpfs cannot be mounted here (not root, or no mount permission)."""


def mount_tmpfs(path: Path, size_bytes: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        raise DiskUnavailable("mounting a tmpfs needs root (CI runs as root)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        raise DiskUnavailable(f"cannot mount a tmpfs at {path}: {done.stderr.strip()}")


def unmount(path: Path) -> None:
    """Unmount ``path`` if it is a mount point (lazily if busy)."""
    if not os.path.ismount(path):
        return
    if subprocess.run(["umount", str(path)], timeout=30, check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], timeout=30, check=False)


def fill(directory: Path) -> int:
    """Grow a filler file in ``directory`` until the file system refuses even one byte; the
    bytes it took."""
    path = directory / FILLER_NAME
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return path.stat().st_size


def free(directory: Path) -> None:
    (directory / FILLER_NAME).unlink(missing_ok=True)
