"""``ServerProcess``'s ready handshake: the ready line (and the Kinesis one), with cluster
mode's ``streamd cluster: node ID joined cluster CID`` line before them or not, read from a
stand-in child that prints exactly those lines (no server needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from streamd.testing.process import ServerProcess, ServerStartError


class Printer(ServerProcess):
    """A ServerProcess whose "server" prints ``lines`` and then waits to be stopped."""

    def __init__(self, data_dir: Path, lines: list[str], *, kinesis: bool = False) -> None:
        super().__init__(data_dir, kinesis=kinesis)
        self.lines = lines

    def command(self) -> list[str]:
        script = "".join(f"print({line!r}, flush=True)\n" for line in self.lines)
        return [sys.executable, "-c", script + "import time\ntime.sleep(60)\n"]


@pytest.mark.parametrize("kinesis", [False, True])
def test_the_cluster_line_before_the_ready_lines_gives_the_cluster_id(
    tmp_path: Path, kinesis: bool
) -> None:
    lines = [
        "streamd cluster: node node2 joined cluster c-42",
        "streamd ready: listening on 127.0.0.1:7072",
        *(["streamd kinesis ready: listening on 127.0.0.1:4572"] if kinesis else []),
    ]
    with Printer(tmp_path / "d", lines, kinesis=kinesis) as server:
        assert server.cluster_id == "c-42"
        assert server.endpoint == "127.0.0.1:7072"
        if kinesis:
            assert server.kinesis_endpoint == "http://127.0.0.1:4572"


def test_without_the_cluster_line_the_embedded_handshake_is_unchanged(tmp_path: Path) -> None:
    lines = ["streamd ready: listening on 127.0.0.1:7070"]
    with Printer(tmp_path / "d", lines) as server:
        assert server.cluster_id is None and server.endpoint == "127.0.0.1:7070"


def test_another_first_line_is_refused(tmp_path: Path) -> None:
    lines = ["hello", "streamd ready: listening on 127.0.0.1:7070"]
    with pytest.raises(ServerStartError, match="unexpected first line"):
        Printer(tmp_path / "d", lines).start()
