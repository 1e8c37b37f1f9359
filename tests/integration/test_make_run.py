"""``make run`` with the ports and the data dir changed from the command line (README), as a
real process: ``LISTEN``, ``KINESIS_LISTEN``, ``CONSOLE_LISTEN`` and ``DATA_DIR`` reach
``streamd serve``, which prints the console's URL.

The venv is the one running the tests (``BIN``, ``STAMP`` overridden), so no install happens.
The server runs in its own process group, stopped by SIGTERM to the group (make does not
forward signals to its child), bounded by timeouts.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).parents[2]
READY_S_MAX = 30.0
READY_RE = re.compile(
    r"^streamd ((kinesis )?ready: listening on (\S+):(\d+)|console ready: http://\S+/)$"
)


def _ready_lines(process: subprocess.Popen[bytes]) -> list[str]:
    """The three ready lines, read straight from the pipe (a buffered readline could hold the
    last ones where select cannot see them)."""
    assert process.stdout is not None
    buffered = b""
    deadline = time.monotonic() + READY_S_MAX
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while buffered.count(b"\n") < 3 and time.monotonic() < deadline:
            if selector.select(timeout=0.5):
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:
                    break
                buffered += chunk
    lines = buffered.decode().splitlines()
    return [line for line in lines if READY_RE.match(line)]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_make_run_takes_listen_kinesis_listen_and_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    native, kinesis, console = _free_port(), _free_port(), _free_port()
    bin_dir = Path(sys.executable).parent
    process = subprocess.Popen(
        [
            "make",
            "-s",
            "-C",
            str(REPO),
            "run",
            f"BIN={bin_dir}",
            "STAMP=Makefile",
            f"LISTEN=127.0.0.1:{native}",
            f"KINESIS_LISTEN=127.0.0.1:{kinesis}",
            f"CONSOLE_LISTEN=127.0.0.1:{console}",
            f"DATA_DIR={data}",
            "SERVE_ARGS=--log-level warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        lines = _ready_lines(process)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert len(lines) == 3, err.decode()
    assert lines == [
        f"streamd ready: listening on 127.0.0.1:{native}",
        f"streamd kinesis ready: listening on 127.0.0.1:{kinesis}",
        f"streamd console ready: http://127.0.0.1:{console}/",
    ]
    assert (data / "meta.sqlite3").exists() and (data / ".lock").exists()
