"""A real ``streamd serve`` subprocess for tests, scenarios and the benchmark.

``ServerProcess`` starts ``python -m streamd serve`` on ``127.0.0.1:0`` (or a given port) with a
data directory, waits for the one ready line the server prints on stdout
(``streamd ready: listening on HOST:PORT``) and exposes the address it found there; in cluster
mode the line ``streamd cluster: node ID joined cluster CID`` comes first (``cluster_id``). With
``kinesis=True`` the Kinesis gateway listens too (on ``kinesis_port``, 0 = a free port) and the
second ready line (``streamd kinesis ready: listening on HOST:PORT``) gives ``kinesis_endpoint``;
without it the gateway is off (``--kinesis-listen off``), so that test servers never fight over
the CLI's default port 4567. Likewise ``console=True`` turns the operator console on (on
``console_port``; ``console_url`` from its ready line, which comes after the Kinesis one), and
without it ``--console-listen off`` keeps test servers off the CLI's default 8080. Faults are
methods: ``kill9()`` (SIGKILL: no shutdown code runs, exactly what a power cut does to the
process), ``terminate()`` (SIGTERM: the clean path), ``restart()`` (same data dir, same port by
default so that clients keep their endpoint across a crash).

Why a subprocess and not ``trio.run`` in a thread: kill -9 is only honest against a real
process, and a real process is what operators run. Why the stdout handshake: it is the one
signal that the listener is bound (a log line could be reordered or reformatted).

Cleanup is not optional (no orphan servers): ``close()`` is idempotent and runs from the context
manager, from an ``atexit`` hook for every live instance, and, on Linux, the child gets
``PR_SET_PDEATHSIG`` = SIGKILL so it dies with the process that started it even if that one is
itself killed -9. Every wait has a timeout.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Final

import cbor2

from streamd import layout

READY_RE: Final = re.compile(rb"^streamd ready: listening on (\S+):(\d+)\s*$")
KINESIS_READY_RE: Final = re.compile(rb"^streamd kinesis ready: listening on (\S+):(\d+)\s*$")
CONSOLE_READY_RE: Final = re.compile(rb"^streamd console ready: http://(\S+):(\d+)/\s*$")
# Cluster mode prints this line before the ready line (CLUSTER-CONTRACT, docs/cluster.md).
CLUSTER_READY_RE: Final = re.compile(rb"^streamd cluster: node (\S+) joined cluster (\S+)\s*$")
START_TIMEOUT_S_DEFAULT: Final = 20.0
STOP_TIMEOUT_S_DEFAULT: Final = 15.0
_PR_SET_PDEATHSIG: Final = 1
_LOG_TAIL_BYTES: Final = 4000

_live: weakref.WeakSet[ServerProcess] = weakref.WeakSet()


class ServerStartError(RuntimeError):
    """The server exited or stayed silent before printing its ready line."""


def death_signal_setter() -> Callable[[], None] | None:
    """A preexec_fn that asks Linux to SIGKILL the child when its parent thread dies, or None.

    Only from the main thread: the signal follows the *thread* that forked, and a worker
    thread (trio.to_thread, anyio) may exit long before the test does.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not (
        threading.main_thread()
    ):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not after fork
    except (OSError, AttributeError):
        return None

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return set_death_signal


def free_ports(host: str, count: int) -> list[int]:
    """``count`` distinct TCP ports free on ``host`` just now (all held open while picking, so
    none is picked twice). Someone may take one before it is bound: callers retry on that."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def stop_process(
    process: subprocess.Popen[bytes], signum: int, timeout_s: float, kill_timeout_s: float
) -> int:
    """Send ``signum`` to a live child and wait ``timeout_s`` for it, then SIGKILL it and wait
    ``kill_timeout_s``; returns its exit status (at once if it had already exited)."""
    if process.poll() is None:
        process.send_signal(signum)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=kill_timeout_s)
    return process.returncode


def _preexec(rlimit_nofile: int | None) -> Callable[[], None] | None:
    """The child's set-up between fork and exec: the death signal, and the open-files limit
    (soft and hard, so the server cannot raise it) when ``rlimit_nofile`` is given."""
    death = death_signal_setter()
    if rlimit_nofile is None:
        return death
    limit = rlimit_nofile

    def set_up() -> None:
        if death is not None:
            death()
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return set_up


class ServerProcess:
    """One ``streamd serve`` child process over a data dir that outlives restarts.

    ``data_dir`` None makes a temporary one, removed by ``close()``. ``extra_args`` are appended
    to the serve command line (e.g. ``["--fsync", "never"]``); ``env`` adds environment variables.
    ``rlimit_nofile`` runs the server under that open-files limit (``ulimit -n``).
    """

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        fsync: str = "always",
        port: int = 0,
        host: str = "127.0.0.1",
        log_format: str = "json",
        log_level: str = "info",
        extra_args: Sequence[str] = (),
        start_timeout_s: float = START_TIMEOUT_S_DEFAULT,
        kinesis: bool = False,
        kinesis_port: int = 0,
        console: bool = False,
        console_port: int = 0,
        env: Mapping[str, str] | None = None,
        rlimit_nofile: int | None = None,
        own_process_group: bool = False,
    ) -> None:
        self._owns_dir = data_dir is None
        if data_dir is None:
            data_dir = tempfile.mkdtemp(prefix="streamd-test-")
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.host = host
        self.port = port  # 0 until the first start; then kept for restarts
        self.log_format = log_format
        self.log_level = log_level
        self.extra_args = list(extra_args)
        self.start_timeout_s = start_timeout_s
        self.kinesis = kinesis
        self.kinesis_port = kinesis_port  # like ``port``: kept for restarts once known
        self.console = console
        self.console_port = console_port  # like ``port``: kept for restarts once known
        self.env = dict(env or {})  # added to this process's environment for the server
        self.rlimit_nofile = rlimit_nofile
        self.own_process_group = own_process_group  # a terminal's Ctrl-C does not reach it
        self.cluster_id: str | None = None  # from the cluster line, in cluster mode
        self.starts = 0
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.server.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._closed = False
        _live.add(self)

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> ServerProcess:
        if self._process is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def endpoint(self) -> str:
        """``HOST:PORT`` the running server listens on."""
        if self.port == 0:
            raise RuntimeError("the server has not started yet")
        return f"{self.host}:{self.port}"

    @property
    def kinesis_endpoint(self) -> str:
        """``http://HOST:PORT`` of the running server's Kinesis gateway (``kinesis=True``)."""
        if not self.kinesis or self.kinesis_port == 0:
            raise RuntimeError("the Kinesis gateway is off or has not started yet")
        return f"http://{self.host}:{self.kinesis_port}"

    @property
    def console_url(self) -> str:
        """``http://HOST:PORT`` of the running server's console (``console=True``)."""
        if not self.console or self.console_port == 0:
            raise RuntimeError("the console is off or has not started yet")
        return f"http://{self.host}:{self.console_port}"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the server is not running")
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "streamd",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            f"{self.host}:{self.port}",
            "--fsync",
            self.fsync,
            "--log-format",
            self.log_format,
            "--log-level",
            self.log_level,
            "--kinesis-listen",
            f"{self.host}:{self.kinesis_port}" if self.kinesis else "off",
            "--console-listen",
            f"{self.host}:{self.console_port}" if self.console else "off",
            *self.extra_args,
        ]

    def start(self) -> ServerProcess:
        """Start the server and wait (bounded) for its ready line. Raises ServerStartError."""
        self.launch()
        return self.wait_ready()

    def launch(self) -> ServerProcess:
        """Start the process without waiting: then ``wait_ready()`` (to start several at once)."""
        if self._closed:
            raise RuntimeError("this ServerProcess is closed")
        if self.running:
            raise RuntimeError("the server is already running")
        self._log_file = open(self.log_path, "ab")  # closed in _reap
        self._log_file.write(f"--- start {self.starts + 1}: {self.command()}\n".encode())
        self._log_file.flush()
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        self._process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            env=env,
            preexec_fn=_preexec(self.rlimit_nofile),
            process_group=0 if self.own_process_group else None,
        )
        self.starts += 1
        return self

    def wait_ready(self) -> ServerProcess:
        """Wait (bounded) for the ready line of a launched server. Raises ServerStartError (and
        kills it then)."""
        try:
            self.host, self.port = self._wait_ready()
        except BaseException:
            self._signal_and_reap(signal.SIGKILL, STOP_TIMEOUT_S_DEFAULT)
            raise
        return self

    def _wait_ready(self) -> tuple[str, int]:
        process = self._process
        assert process is not None and process.stdout is not None
        deadline = time.monotonic() + self.start_timeout_s
        buffered = b""
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while (lines := self._ready_lines(buffered)) is None:
                left_s = deadline - time.monotonic()
                if left_s <= 0:
                    raise ServerStartError(
                        f"no ready line within {self.start_timeout_s} s\n{self.log_tail()}"
                    )
                if not selector.select(timeout=min(left_s, 0.5)):
                    continue
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:
                    code = process.wait(timeout=STOP_TIMEOUT_S_DEFAULT)
                    raise ServerStartError(
                        f"server exited with {code} before it was ready\n{self.log_tail()}"
                    )
                buffered += chunk
        cluster = CLUSTER_READY_RE.match(lines[0])
        if cluster is not None:
            self.cluster_id = cluster.group(2).decode()
            lines = lines[1:]
        match = READY_RE.match(lines[0])
        if match is None:
            raise ServerStartError(
                f"unexpected first line on stdout: {lines[0]!r}\n{self.log_tail()}"
            )
        if self.kinesis:
            kinesis_match = KINESIS_READY_RE.match(lines[1])
            if kinesis_match is None:
                raise ServerStartError(
                    f"unexpected second line on stdout: {lines[1]!r}\n{self.log_tail()}"
                )
            self.kinesis_port = int(kinesis_match.group(2))
        if self.console:
            console_line = lines[2 if self.kinesis else 1]
            console_match = CONSOLE_READY_RE.match(console_line)
            if console_match is None:
                raise ServerStartError(
                    f"unexpected console line on stdout: {console_line!r}\n{self.log_tail()}"
                )
            self.console_port = int(console_match.group(2))
        return match.group(1).decode(), int(match.group(2))

    def _ready_lines(self, buffered: bytes) -> list[bytes] | None:
        """The complete lines so far once they are enough to judge (the ready line, the
        Kinesis one, and the cluster line before them when there is one), else None."""
        lines = buffered.split(b"\n")[:-1]
        needed = 1 + int(self.kinesis) + int(self.console)
        if lines and CLUSTER_READY_RE.match(lines[0]):
            needed += 1
        return lines if len(lines) >= needed else None

    def exit_status(self) -> int | None:
        """The exit status if the process has exited (not yet reaped by a stop), else None."""
        return None if self._process is None else self._process.poll()

    def kill9(self) -> int:
        """SIGKILL the server and wait for it; returns its exit status (-9)."""
        return self._signal_and_reap(signal.SIGKILL, STOP_TIMEOUT_S_DEFAULT)

    def terminate(self, timeout_s: float = STOP_TIMEOUT_S_DEFAULT) -> int:
        """SIGTERM (clean shutdown), then SIGKILL if it is not gone within ``timeout_s``."""
        return self._signal_and_reap(signal.SIGTERM, timeout_s)

    def stop_signal(self, signum: int) -> None:
        """Send any signal (SIGSTOP/SIGCONT for pause faults) without waiting."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signum)

    def restart(self, *, same_port: bool = True) -> ServerProcess:
        """Start again over the same data dir (the previous process must be stopped)."""
        if self.running:
            raise RuntimeError("stop the server (kill9 or terminate) before restarting it")
        if not same_port:
            self.port = 0
            self.kinesis_port = 0
        return self.start()

    def _signal_and_reap(self, signum: int, timeout_s: float) -> int:
        process = self._process
        if process is None:
            return 0
        try:
            return stop_process(process, signum, timeout_s, STOP_TIMEOUT_S_DEFAULT)
        finally:
            self._reap()

    def _reap(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.stdout is not None:
            process.stdout.close()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def close(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove a temporary data dir. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.terminate()
        finally:
            _live.discard(self)
            if self._owns_dir:
                shutil.rmtree(self.data_dir, ignore_errors=True)
                with contextlib.suppress(OSError):
                    self.log_path.unlink()

    # -- diagnostics ---------------------------------------------------------------------------

    def stream_dir(self, name: str) -> Path:
        """The directory holding the shards of the stream named ``name`` (its by-id directory,
        found through the metadata file; the server may be running or stopped)."""
        uri = f"file:{self.data_dir / 'meta.sqlite3'}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            row = db.execute("SELECT value FROM kv WHERE key = ?", (f"streams/{name}",)).fetchone()
        if row is None:
            raise KeyError(f"no stream {name!r} in {self.data_dir}")
        return layout.stream_dir(self.data_dir, cbor2.loads(row[0])["stream_id"])

    def log_text(self) -> str:
        """Everything the server wrote to stderr so far (all starts)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, size_bytes: int = _LOG_TAIL_BYTES) -> str:
        return self.log_text()[-size_bytes:]

    def cpu_seconds(self) -> float:
        """utime + stime of the running server from /proc (Linux), in seconds."""
        return process_cpu_seconds(self.pid)


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used, from /proc/PID/stat (Linux only)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    utime_ticks, stime_ticks = int(fields[11]), int(fields[12])
    return (utime_ticks + stime_ticks) / os.sysconf("SC_CLK_TCK")


@atexit.register
def _close_all() -> None:
    for server in list(_live):
        with contextlib.suppress(Exception):
            server.close()
