"""A real single-member etcd process for tests and scenarios, on free loopback ports.

``EtcdProcess`` runs the ``etcd`` binary (Debian package ``etcd-server``, 3.4 or later) with a
data dir of its own (temporary unless given), client and peer URLs on loopback ports picked free
just before the start, and waits (bounded) until ``GET /health`` says it is healthy. Faults are
methods, as on ``ServerProcess``: ``kill9()``, ``terminate()``, ``pause()``/``resume()``
(SIGSTOP/SIGCONT), ``restart()`` (same data dir and ports).

Why a subprocess and real etcd rather than a fake: the metadata store's conformance suite is
only worth something against the real thing (its revisions, compaction, lease expiry and the
gateway's JSON quirks). Why pick ports ourselves: etcd must advertise concrete URLs, so port 0
will not do; a port taken in the short race before etcd binds makes the start fail with
"address already in use", and ``start`` then retries on fresh ports. Fixed ports
(``client_port``, ``peer_port``) are for an etcd someone types the address of (``streamd dev
cluster``); a taken one fails the start at once.

If etcd is not installed, ``start`` raises ``EtcdNotInstalledError`` saying how to install it
(tests that need etcd fail with that message: they are never silently skipped). Cleanup as on
``ServerProcess``: ``close()`` is idempotent, runs from the context manager and an ``atexit``
hook, and the child dies with its parent (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Final

from .process import death_signal_setter, free_ports, stop_process

START_TIMEOUT_S_DEFAULT: Final = 20.0
STOP_TIMEOUT_S_DEFAULT: Final = 10.0
_START_ATTEMPTS_MAX: Final = 3
_HEALTH_POLL_S: Final = 0.05
_LOG_TAIL_BYTES: Final = 4000
INSTALL_HINT: Final = (
    "etcd is not installed (no `etcd` on PATH). Install it with "
    "`apt-get install etcd-server` (Debian/Ubuntu; `make test` does it when run as root), "
    "or put an etcd 3.4+ binary on PATH, or set STREAMD_ETCD_BIN."
)

_live: weakref.WeakSet[EtcdProcess] = weakref.WeakSet()


class EtcdNotInstalledError(RuntimeError):
    """No etcd binary to run."""


class EtcdStartError(RuntimeError):
    """etcd exited, or was not healthy, before the start timeout."""


def etcd_binary() -> str:
    """The etcd binary to run: $STREAMD_ETCD_BIN, else ``etcd`` on PATH."""
    explicit = os.environ.get("STREAMD_ETCD_BIN")
    found = explicit if explicit and os.access(explicit, os.X_OK) else shutil.which("etcd")
    if found is None:
        raise EtcdNotInstalledError(INSTALL_HINT)
    return found


@dataclass(frozen=True)
class EtcdTls:
    """etcd's server certificate and key, and the CA its clients' certificates must be of
    (the same CA signs both in the tests)."""

    ca: Path
    cert: Path
    key: Path


class EtcdProcess:
    """One etcd member on loopback. ``endpoint`` is ``HOST:PORT`` of its client URL."""

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        name: str = "streamd-test",
        host: str = "127.0.0.1",
        client_port: int = 0,
        peer_port: int = 0,
        start_timeout_s: float = START_TIMEOUT_S_DEFAULT,
        own_process_group: bool = False,
        tls: EtcdTls | None = None,
    ) -> None:
        """``tls``: serve clients over https with that certificate, and require client
        certificates signed by its CA (etcd's --client-cert-auth)."""
        if (client_port == 0) != (peer_port == 0):
            raise ValueError("give both client_port and peer_port, or neither (free ports)")
        self._owns_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="streamd-etcd-"))
        self.name = name
        self.host = host
        self.start_timeout_s = start_timeout_s
        self.client_port = client_port  # 0: picked at the first start, kept for restarts
        self.peer_port = peer_port
        self.own_process_group = own_process_group  # a terminal's Ctrl-C does not reach it
        self.tls = tls
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.etcd.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._closed = False
        _live.add(self)

    def __enter__(self) -> EtcdProcess:
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
        if self.client_port == 0:
            raise RuntimeError("etcd has not started yet")
        return f"{self.host}:{self.client_port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def exit_status(self) -> int | None:
        """The exit status if etcd has exited (not yet reaped by a stop), else None."""
        return None if self._process is None else self._process.poll()

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("etcd is not running")
        return self._process.pid

    def command(self) -> list[str]:
        client = f"{'https' if self.tls else 'http'}://{self.host}:{self.client_port}"
        peer = f"http://{self.host}:{self.peer_port}"
        tls_args = [] if self.tls is None else [
            "--cert-file", str(self.tls.cert), "--key-file", str(self.tls.key),
            "--trusted-ca-file", str(self.tls.ca), "--client-cert-auth",
        ]  # fmt: skip
        return [
            etcd_binary(),
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir / "member-data"),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"{self.name}={peer}",
            "--initial-cluster-state",
            "new",
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
            *tls_args,
        ]

    def start(self) -> EtcdProcess:
        """Start etcd and wait (bounded) until it is healthy. Raises EtcdStartError."""
        if self._closed:
            raise RuntimeError("this EtcdProcess is closed")
        if self.running:
            raise RuntimeError("etcd is already running")
        fresh_ports = self.client_port == 0
        for attempt in range(1, _START_ATTEMPTS_MAX + 1):
            if fresh_ports:
                self.client_port, self.peer_port = free_ports(self.host, 2)
            try:
                self._start_once()
                return self
            except EtcdStartError:
                if not fresh_ports or attempt == _START_ATTEMPTS_MAX:
                    raise
                if "address already in use" not in self.log_tail():
                    raise
        raise AssertionError("unreachable")

    def _start_once(self) -> None:
        command = self.command()  # raises EtcdNotInstalledError first
        self._log_file = open(self.log_path, "ab")  # closed in _reap
        self._log_file.write(f"--- start: {command}\n".encode())
        self._log_file.flush()
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
            preexec_fn=death_signal_setter(),
            process_group=0 if self.own_process_group else None,
        )
        try:
            self._wait_healthy()
        except BaseException:
            self._signal_and_reap(signal.SIGKILL)
            raise

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise EtcdStartError(
                    f"etcd exited with {self._process.returncode} before it was healthy\n"
                    f"{self.log_tail()}"
                )
            if self.healthy(timeout_s=1.0):
                return
            time.sleep(_HEALTH_POLL_S)
        raise EtcdStartError(f"etcd not healthy within {self.start_timeout_s} s\n{self.log_tail()}")

    def healthy(self, timeout_s: float = 1.0) -> bool:
        """True if ``GET /health`` answers ``{"health": "true"}`` within ``timeout_s``."""
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(cafile=str(self.tls.ca))
            context.load_cert_chain(str(self.tls.cert), str(self.tls.key))
        try:
            with urllib.request.urlopen(
                f"{self.url}/health", timeout=timeout_s, context=context
            ) as answer:
                return bool(json.loads(answer.read()).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def kill9(self) -> int:
        return self._signal_and_reap(signal.SIGKILL)

    def terminate(self) -> int:
        return self._signal_and_reap(signal.SIGTERM)

    def pause(self) -> None:
        """SIGSTOP: etcd stops answering but keeps its sockets (a hung member)."""
        if self.running:
            assert self._process is not None
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.running:
            assert self._process is not None
            self._process.send_signal(signal.SIGCONT)

    def stop_signal(self, signum: int) -> None:
        """Send any signal without waiting (as ``ServerProcess.stop_signal``)."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signum)

    def restart(self) -> EtcdProcess:
        """Start again over the same data dir and ports (stop it first)."""
        if self.running:
            raise RuntimeError("stop etcd (kill9 or terminate) before restarting it")
        return self.start()

    def _signal_and_reap(self, signum: int) -> int:
        process = self._process
        if process is None:
            return 0
        try:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)  # a paused etcd cannot act on SIGTERM
            return stop_process(process, signum, STOP_TIMEOUT_S_DEFAULT, STOP_TIMEOUT_S_DEFAULT)
        finally:
            self._process = None
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    def close(self) -> None:
        """Stop etcd and remove a temporary data dir and its log. Idempotent."""
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

    def log_tail(self, size_bytes: int = _LOG_TAIL_BYTES) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size_bytes:]
        except OSError:
            return ""


@atexit.register
def _close_all() -> None:
    for process in list(_live):
        with contextlib.suppress(Exception):
            process.close()
