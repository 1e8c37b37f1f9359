"""``streamd top``'s live loop: a sampler task, a key reader, one rich ``Live`` display.

The sampler takes a sample every interval (measured from the start of the previous round, so a
slow round does not stretch the period by its own length), builds the view from it and the one
before, and draws. The key reader (when stdin is a terminal) redraws on a sort key and ends
everything on ``q``. A round that fails (the server went away, a timeout) keeps the last frame
with the error on its summary line; the next round tries again, so top rides out a restart.
Ctrl-C arrives as KeyboardInterrupt: ``cbreak`` and ``Live`` undo what they did on the way out.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any

import trio
from rich.live import Live

from streamd_client.errors import StreamdError

from .model import Sample, View, build_view
from .screen import ScreenState, cbreak, console_for, keys, render


async def run_live(gatherer: Any, *, endpoint: str, interval_s: float, sort: str) -> None:
    """Until ``q`` (or Ctrl-C: KeyboardInterrupt, or end of input on stdin)."""
    console = console_for()
    state = ScreenState(sort=sort)
    frame: dict[str, Any] = {"view": None, "status": ""}
    stdin = sys.stdin
    interactive = stdin.isatty()
    with contextlib.ExitStack() as restore:
        if interactive:
            restore.enter_context(cbreak(stdin.fileno()))
        live = restore.enter_context(
            Live(console=console, screen=True, auto_refresh=False, redirect_stderr=False)
        )

        def draw() -> None:
            view: View | None = frame["view"]
            height = console.size.height
            live.update(
                render(view, state, endpoint=endpoint, height=height, status=frame["status"]),
                refresh=True,
            )

        async def sample_forever() -> None:
            previous: Sample | None = None
            while True:
                started = time.monotonic()
                try:
                    current = await gatherer.sample()
                except StreamdError as exc:
                    frame["status"] = f"error: {exc.code}: {exc.message} (retrying)"
                else:
                    frame["view"], frame["status"] = build_view(previous, current), ""
                    previous = current
                draw()
                await trio.sleep(max(0.0, started + interval_s - time.monotonic()))

        draw()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample_forever)
            if interactive:
                async for key in keys(stdin.fileno()):
                    if key in ("q", "Q"):
                        break
                    if state.press(key):
                        draw()
            else:
                await trio.sleep_forever()
            nursery.cancel_scope.cancel()
