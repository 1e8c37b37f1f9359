#!/usr/bin/env python3
"""The README's tour, run as it is written: every code block marked ``<!-- tour -->``, top to
bottom, against a real server, twice.

    python scenarios/readme_tour.py [--readme README.md] [--runs 2]

How the README is read: a fenced block whose previous line is ``<!-- tour -->`` is a tour
step; one marked ``<!-- not-tour: why -->`` is deliberately left out (the ``streamd serve``
line, which this script replaces by its own server; the aws CLI, which is not installed with
the project). Every ``console`` and ``python`` block of the README must carry one of the two
marks (``unmarked_blocks`` finds those that do not; the test fails on them), so a new example
cannot silently escape the tour.

How a block runs:

- ``console``: each ``$ command`` runs in bash, from a scratch directory, with the venv's
  ``streamd`` first on PATH and ``STREAMD_ENDPOINT`` set to the server. It must exit 0. When
  the README shows output under the command, the output must be exactly those lines, except
  that a line ``...`` stands for any number of lines, and any ISO 8601 time matches any other
  (arrival and creation times differ from run to run). A command ending in ``&`` runs in the
  background until the end of its block (it must still be running or have exited 0 then; its
  output is not compared: when it prints is a matter of timing).
- ``python``: the block runs as a script with this interpreter and must exit 0; its output is
  not compared (it prints sequence numbers and producer statistics).

In both, the README's default addresses (``127.0.0.1:7070`` native, ``http://127.0.0.1:4567``
Kinesis) are replaced by the test server's, so the tour never needs those ports free.

Twice, because a tour a reader follows a second time (or a CI that reruns it) must work again:
whatever a block creates it must tolerate finding there, or delete again at the end.
Exit status 0 when every step of every run passed, 1 otherwise (each failure is printed with
its README line, what was expected and what came).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parents[1]
README: Final = REPO / "README.md"
NATIVE_DEFAULT: Final = "127.0.0.1:7070"
KINESIS_DEFAULT: Final = "http://127.0.0.1:4567"
STEP_TIMEOUT_S: Final = 120.0
STOP_TIMEOUT_S: Final = 10.0
TOUR_MARK: Final = "<!-- tour -->"
NOT_TOUR_RE: Final = re.compile(r"^<!-- not-tour: .+ -->$")
_FENCE_RE: Final = re.compile(r"^```(\w*)\s*$")
_TIME_RE: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")
_BACKGROUND_RE: Final = re.compile(r"\s&\s*(#.*)?$")
ANY_LINES: Final = "..."


@dataclass(frozen=True, slots=True)
class Block:
    """A fenced code block of the README: its language, text, first line number, and mark."""

    language: str
    text: str
    line: int
    mark: str  # "tour", "not-tour" or "" (unmarked)


@dataclass(frozen=True, slots=True)
class Step:
    """One ``$ command`` of a console block and the output the README shows under it."""

    command: str
    expected: tuple[str, ...]
    line: int

    @property
    def background(self) -> bool:
        return _BACKGROUND_RE.search(self.command) is not None


@dataclass(slots=True)
class Failure:
    line: int
    what: str
    detail: str

    def __str__(self) -> str:
        return f"README.md:{self.line}: {self.what}\n{self.detail}"


@dataclass(slots=True)
class Target:
    """Where the tour runs: the server's addresses and a scratch directory."""

    endpoint: str
    kinesis_endpoint: str
    workdir: Path
    failures: list[Failure] = field(default_factory=list)


# -- reading the README ---------------------------------------------------------------------


def read_blocks(text: str) -> list[Block]:
    """Every fenced block, with the mark on the line just before its opening fence."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE_RE.match(lines[i])
        if opening is None:
            i += 1
            continue
        before = lines[i - 1].strip() if i > 0 else ""
        mark = "tour" if before == TOUR_MARK else "not-tour" if NOT_TOUR_RE.match(before) else ""
        end = i + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        blocks.append(Block(opening.group(1), "\n".join(lines[i + 1 : end]), i + 2, mark))
        i = end + 1
    return blocks


def tour_blocks(text: str) -> list[Block]:
    return [b for b in read_blocks(text) if b.mark == "tour"]


def unmarked_blocks(text: str) -> list[Block]:
    """console and python blocks that are neither tour steps nor deliberately left out."""
    return [b for b in read_blocks(text) if b.language in ("console", "python") and not b.mark]


def console_steps(block: Block) -> list[Step]:
    steps: list[Step] = []
    command: str | None = None
    expected: list[str] = []
    start = block.line
    for offset, line in enumerate(block.text.splitlines()):
        if line.startswith("$ "):
            if command is not None:
                steps.append(Step(command, tuple(expected), start))
            command, expected, start = line[2:], [], block.line + offset
        elif command is not None:
            expected.append(line)
    if command is not None:
        steps.append(Step(command, tuple(expected), start))
    return steps


# -- comparing output -----------------------------------------------------------------------


def _normal(line: str) -> str:
    return _TIME_RE.sub("<time>", line.rstrip())


def output_matches(expected: tuple[str, ...], actual: list[str]) -> bool:
    """Exact lines, but ``...`` matches any number of lines and times match any time."""
    want = [_normal(line) for line in expected]
    have = [_normal(line) for line in actual]
    # reachable[j]: the expected lines seen so far can account for the first j actual lines.
    reachable = [True] + [False] * len(have)
    for pattern in want:
        if pattern == ANY_LINES:
            for j in range(1, len(have) + 1):
                reachable[j] = reachable[j] or reachable[j - 1]
            continue
        reachable = [False] + [reachable[j] and have[j] == pattern for j in range(len(have))]
    return reachable[len(have)]


# -- running --------------------------------------------------------------------------------


def _localize(text: str, target: Target) -> str:
    return text.replace(KINESIS_DEFAULT, target.kinesis_endpoint).replace(
        NATIVE_DEFAULT, target.endpoint
    )


def _environment(target: Target) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return dict(
        os.environ,
        STREAMD_ENDPOINT=target.endpoint,
        PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
    )


def _stop(process: subprocess.Popen[bytes]) -> int | None:
    """Its exit status if it had exited by itself, else None (then it is stopped here)."""
    code = process.poll()
    if code is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT_S)
    return code


def run_console(block: Block, target: Target) -> None:
    background: list[tuple[Step, subprocess.Popen[bytes]]] = []
    try:
        for step in console_steps(block):
            command = _localize(step.command, target)
            if step.background:
                process = subprocess.Popen(
                    ["bash", "-c", _BACKGROUND_RE.sub("", command)],
                    cwd=target.workdir,
                    env=_environment(target),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                )
                background.append((step, process))
                continue
            if not _run_step(step, command, target):
                return  # later steps build on this one
    finally:
        for step, process in background:
            code = _stop(process)
            if code not in (None, 0):
                assert process.stderr is not None
                err = process.stderr.read().decode(errors="replace")
                target.failures.append(Failure(step.line, f"$ {step.command}: exited {code}", err))
            if process.stderr is not None:
                process.stderr.close()


def _run_in_workdir(argv: list[str], target: Target) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` in the tour's work dir and environment, output captured, bounded by
    STEP_TIMEOUT_S (raises subprocess.TimeoutExpired past it)."""
    return subprocess.run(
        argv,
        cwd=target.workdir,
        env=_environment(target),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=STEP_TIMEOUT_S,
        check=False,
    )


def _run_step(step: Step, command: str, target: Target) -> bool:
    try:
        result = _run_in_workdir(["bash", "-c", command], target)
    except subprocess.TimeoutExpired:
        target.failures.append(Failure(step.line, f"$ {step.command}: timed out", ""))
        return False
    out = result.stdout.decode(errors="replace")
    err = result.stderr.decode(errors="replace")
    if result.returncode != 0:
        detail = f"stdout:\n{out}stderr:\n{err}"
        target.failures.append(
            Failure(step.line, f"$ {step.command}: exited {result.returncode}", detail)
        )
        return False
    if step.expected and not output_matches(step.expected, out.splitlines()):
        detail = "expected:\n" + "\n".join(step.expected) + f"\ngot:\n{out}stderr:\n{err}"
        target.failures.append(Failure(step.line, f"$ {step.command}: other output", detail))
        return False
    return True


def run_python(block: Block, target: Target) -> None:
    script = target.workdir / f"readme_line_{block.line}.py"
    script.write_text(_localize(block.text, target) + "\n")
    try:
        result = _run_in_workdir([sys.executable, str(script)], target)
    except subprocess.TimeoutExpired:
        target.failures.append(Failure(block.line, "python block: timed out", ""))
        return
    if result.returncode != 0:
        err = result.stderr.decode(errors="replace")[-3000:]
        target.failures.append(
            Failure(block.line, f"python block: exited {result.returncode}", err)
        )


def run_tour(blocks: list[Block], target: Target) -> list[Failure]:
    """Run the blocks in order; returns the failures of this run (empty: all passed). A failed
    block does not stop the run: later blocks may still pass, and all failures are reported."""
    start = len(target.failures)
    for block in blocks:
        if block.language == "python":
            run_python(block, target)
        elif block.language == "console":
            run_console(block, target)
        else:
            target.failures.append(
                Failure(block.line, f"a tour block in {block.language!r}", "console or python")
            )
    return target.failures[start:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--readme", type=Path, default=README)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args(argv)
    from streamd.testing import ServerProcess

    text = args.readme.read_text()
    blocks = tour_blocks(text)
    failed = [Failure(b.line, "unmarked block", b.text[:200]) for b in unmarked_blocks(text)]
    with tempfile.TemporaryDirectory(prefix="streamd-tour-") as scratch:
        with ServerProcess(Path(scratch) / "data", kinesis=True) as server:
            target = Target(server.endpoint, server.kinesis_endpoint, Path(scratch))
            for run in range(1, args.runs + 1):
                failures = run_tour(blocks, target)
                print(f"run {run}: {len(blocks)} blocks, {len(failures)} failure(s)")
                failed += failures
    for failure in failed:
        print(failure, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
