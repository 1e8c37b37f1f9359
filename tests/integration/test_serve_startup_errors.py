"""``streamd serve`` that cannot start: one line on stderr naming the thing and the flag that
changes it, exit status 2, no traceback, nothing on stdout (no ready line), and the address or
lock it could not have is not held afterwards.

Each case is a real ``python -m streamd serve`` process; taken ports are held by a plain socket
of the test (or by a real server, for the data dir in use).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamd.testing import ServerProcess

SERVE_TIMEOUT_S = 30


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        # The console stays off unless a test names it: the CLI's 8080 may be taken here.
        [sys.executable, "-m", "streamd", "serve", *args]
        + ([] if "--console-listen" in args else ["--console-listen", "off"]),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k != "STREAMD_KINESIS_SECRET_KEY"},
        timeout=SERVE_TIMEOUT_S,
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``error: ...`` line of a failed start (exit 2)."""
    assert result.returncode == 2, result.stderr
    assert result.stdout == "", result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in lines[0]
    return lines[0]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port held by a listening socket for the test's length."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.parametrize(
    ("flag", "hint"),
    [
        ("--listen", "choose another with --listen HOST:PORT"),
        ("--kinesis-listen", "--kinesis-listen off"),
        ("--metrics-listen", None),
        ("--console-listen", "--console-listen off"),
    ],
    ids=["native", "kinesis", "metrics", "console"],
)
def test_a_taken_port_names_the_address_and_its_flag(
    tmp_path: Path, taken_port: int, flag: str, hint: str | None
) -> None:
    address = f"127.0.0.1:{taken_port}"
    listen = {"--listen": "127.0.0.1:0", "--kinesis-listen": "off", flag: address}
    args = [word for pair in listen.items() for word in pair]
    line = one_line_error(serve("--data-dir", str(tmp_path / "d"), *args))
    assert f"{flag} {address}: address already in use" in line
    if hint is not None:
        assert hint in line


def test_the_native_port_is_free_again_after_the_gateway_failed(
    tmp_path: Path, taken_port: int
) -> None:
    # The native listener is bound first; the gateway's failure must not leave it bound (the
    # process exits, but the same holds in-process: _bind_all closes what it opened).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        native = probe.getsockname()[1]
    one_line_error(
        serve(
            "--data-dir",
            str(tmp_path / "d"),
            "--listen",
            f"127.0.0.1:{native}",
            "--kinesis-listen",
            f"127.0.0.1:{taken_port}",
        )
    )
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", native))


def test_a_data_dir_in_use_names_the_dir_and_the_holders_pid(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "d") as running:
        line = one_line_error(
            serve(
                "--data-dir",
                str(running.data_dir),
                "--listen",
                "127.0.0.1:0",
                "--kinesis-listen",
                "off",
            )
        )
        assert f"--data-dir {running.data_dir}: in use by another streamd server" in line
        assert f"(pid {running.pid})" in line
        assert running.running  # the first server is untouched


def test_a_data_dir_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("not a directory")
    line = one_line_error(serve("--data-dir", str(path), "--listen", "127.0.0.1:0"))
    assert f"--data-dir {path}: exists and is not a directory" in line


def test_a_data_dir_under_a_file_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "data"
    line = one_line_error(serve("--data-dir", str(path), "--listen", "127.0.0.1:0"))
    assert f"--data-dir {path}: cannot create it" in line


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody can create files in: mode 0500, or immutable for root (whom file
    modes do not stop)."""
    path = tmp_path / "readonly"
    path.mkdir()
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True, timeout=10)
    else:
        path.chmod(0o500)
    try:
        yield path
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], check=True, timeout=10)
        path.chmod(0o700)


def test_an_unwritable_data_dir(unwritable_dir: Path) -> None:
    line = one_line_error(serve("--data-dir", str(unwritable_dir), "--listen", "127.0.0.1:0"))
    assert f"--data-dir {unwritable_dir}: cannot write in it" in line


def test_a_damaged_metadata_file(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    (data / "meta.sqlite3").write_bytes(b"this is not sqlite " * 500)
    line = one_line_error(serve("--data-dir", str(data), "--listen", "127.0.0.1:0"))
    assert f"--data-dir {data}: cannot open {data / 'meta.sqlite3'}" in line
    assert "not a database" in line


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--listen", "127.0.0.1:http"), "--listen: expected HOST:PORT with a numeric port"),
        (("--listen", "127.0.0.1:70000"), "--listen: port out of range"),
        (("--metrics-listen", "x:y"), "--metrics-listen: expected HOST:PORT"),
        (("--kinesis-listen", "127.0.0.1:-1"), "--kinesis-listen: expected HOST:PORT"),
        (("--kinesis-access-key", "k"), "--kinesis-access-key needs its secret in"),
    ],
)
def test_bad_values_are_one_line_and_exit_2(
    tmp_path: Path, args: tuple[str, ...], needle: str
) -> None:
    line = one_line_error(serve("--data-dir", str(tmp_path / "d"), *args))
    assert needle in line
    assert not (tmp_path / "d").exists()  # refused before anything was made


def test_bad_flags_exit_2_with_usage(tmp_path: Path) -> None:
    result = serve("--data-dir", str(tmp_path / "d"), "--fsync", "sometimes")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "invalid choice: 'sometimes'" in result.stderr
    result = serve("--no-such-flag")
    assert result.returncode == 2 and "unrecognized arguments: --no-such-flag" in result.stderr
