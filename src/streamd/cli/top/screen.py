"""``streamd top``'s terminal: frames drawn with rich, keys read in cbreak mode, clean exit.

Why rich: its ``Live`` display owns the alternate screen and the cursor (entered on start, both
given back on exit, whatever ends the display), and its tables size their columns to the
terminal and cut what does not fit; the same renderables print as plain text when the output is
not a terminal (``--once``). Writing that by hand (curses has no tables, and keeps the screen
in its own state) would be more code to keep than the dependency.

Keys come from stdin in cbreak mode (no echo, no line buffering, signals kept: Ctrl-C still
raises SIGINT, and trio turns it into KeyboardInterrupt), read as the fd becomes readable; the
terminal's attributes are restored in a ``finally``, before rich gives the main screen back.
``q`` ends the display; a sort key (model.SORT_KEYS) orders every panel by it, and pressing it
again reverses the order. A frame is drawn at every sample (``--interval``) and at every key.
"""

from __future__ import annotations

import os
import sys
import termios
import tty
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import trio
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from . import cells
from .model import SORT_KEYS, View, plan_rows, sort_rows

KEY_READ_BYTES: Final = 64
HELP: Final = "keys: n name  w write  r read  b bytes  l lag  (again: reverse)  q quit"


@dataclass(slots=True)
class ScreenState:
    """What the keys change: the sort key and its direction."""

    sort: str = "write"
    reverse: bool = False

    def press(self, key: str) -> bool:
        """Apply a key; False for one that means nothing here."""
        chosen = SORT_KEYS.get(key.lower())
        if chosen is None:
            return False
        self.reverse = not self.reverse if chosen == self.sort else False
        self.sort = chosen
        return True


def render(
    view: View | None, state: ScreenState, *, endpoint: str, height: int | None, status: str = ""
) -> RenderableType:
    """One frame: a summary line, the key help, then the four panels fitted to ``height``
    lines (None: every row, for ``--once``)."""
    if view is None:
        return Text(f"streamd top  {endpoint}  sampling...")
    panels: list[tuple[str, Sequence[Any], Sequence[str], Callable[[Any], list[str]]]] = [
        ("Nodes", view.nodes, cells.NODE_COLUMNS, cells.node_cells),
        ("Streams", view.streams, cells.STREAM_COLUMNS, cells.stream_cells),
        ("Consumer groups", view.groups, cells.GROUP_COLUMNS, cells.group_cells),
        ("Shards", view.shards, cells.SHARD_COLUMNS, cells.shard_cells),
    ]
    wanted = {name: len(rows) for name, (_, rows, _, _) in zip(PANEL_NAMES, panels, strict=True)}
    plan = dict(wanted) if height is None else plan_rows(height, wanted)
    parts: list[RenderableType] = [_summary(view, state, endpoint, status), Text(HELP, style="dim")]
    for name, (title, rows, columns, to_cells) in zip(PANEL_NAMES, panels, strict=True):
        shown = plan[name]
        if shown <= 0:
            continue
        ordered = sort_rows(rows, state.sort, state.reverse)[:shown]
        body = [to_cells(r) for r in ordered]
        parts.append(_table(title, len(rows), columns, body, state, expand=height is not None))
    return Group(*parts)


PANEL_NAMES: Final = ("nodes", "streams", "groups", "shards")


def _summary(view: View, state: ScreenState, endpoint: str, status: str) -> Text:
    arrow = "^" if state.reverse else "v"
    every = "first frame" if view.interval_s is None else f"rates over {view.interval_s:.1f}s"
    mode = "cluster" if view.clustered else "embedded"
    line = Text()
    line.append("streamd top", style="bold")
    line.append(
        f"  {endpoint} ({mode})  {len(view.nodes)} node(s)  {len(view.streams)} stream(s)  "
        f"{len(view.shards)} shard(s)  {len(view.groups)} group(s)  {every}  "
        f"sort: {state.sort} {arrow}"
    )
    for note in (*view.notes, *([status] if status else [])):
        line.append(f"  {note}", style="yellow")
    return line


def _table(
    title: str,
    total: int,
    columns: Sequence[str],
    rows: list[list[str]],
    state: ScreenState,
    *,
    expand: bool,
) -> Table:
    shown = f"{title} ({total})" if len(rows) == total else f"{title} ({len(rows)} of {total})"
    table = Table(title=shown, title_justify="left", box=None, expand=expand, pad_edge=False)
    marked = cells.SORTED_COLUMNS.get(state.sort, set())
    for index, column in enumerate(columns):
        table.add_column(
            column,
            justify="left" if index < 2 else "right",
            header_style="bold reverse" if column in marked else "bold",
            no_wrap=True,
            overflow="ellipsis",
        )
    for row in rows:
        bad = any(cell.startswith(("unreachable", "down", "no stats")) for cell in row)
        table.add_row(*row, style="red" if bad else None)
    return table


# -- the terminal ------------------------------------------------------------------------------


@contextmanager
def cbreak(fd: int) -> Iterator[None]:
    """Keys one at a time, without echo; the attributes as they were afterwards, always."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def keys(fd: int) -> AsyncIterator[str]:
    """Each key typed on ``fd`` (ends at end of input)."""
    while True:
        await trio.lowlevel.wait_readable(fd)
        data = os.read(fd, KEY_READ_BYTES)
        if not data:
            return
        for key in data.decode(errors="replace"):
            yield key


PLAIN_WIDTH: Final = 1000  # not a terminal: tables take their natural width, nothing is cut


def console_for(stream: Any = None) -> Console:
    """A console on stdout; not a terminal: plain text (no escapes) that is never cut."""
    out = stream or sys.stdout
    if out.isatty():
        return Console(file=out)
    return Console(file=out, width=PLAIN_WIDTH, color_system=None, force_terminal=False)
