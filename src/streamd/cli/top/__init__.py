"""``streamd top``: a live terminal view of streams, shards, consumer groups and nodes.

    streamd top [--endpoint HOST:PORT[,HOST:PORT]] [--interval S] [--sort name|write|read|bytes|lag]
                [--once] [--json]

Every ``--interval`` seconds (default 2) one round of read-only client calls (gather.py) makes a
sample; two successive samples give the rates (model.py); the frame is drawn with rich
(screen.py) on the alternate screen and the terminal is given back as it was on ``q``, Ctrl-C
(exit 130, as every command) or an error. Against a cluster, any nodes of it as the bootstrap
list: top finds the others (``cluster_nodes``) and asks each for its own shards.

``--once`` (implied when stdout is not a terminal, for scripts): take two samples an interval
apart and print one frame, as text or with ``--json`` as one JSON document (model.view_document),
then exit 0. Exit statuses are the CLI's (common.py); a server that goes away mid-view is shown
on the frame and tried again at the next interval, not an exit.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Final

from ..common import EXIT_OK, add_endpoint, positive_float, run_client_command

INTERVAL_S_DEFAULT: Final = 2.0
INTERVAL_S_MIN: Final = 0.2
REQUEST_TIMEOUT_S_MIN: Final = 2.0


def register(commands: Any) -> None:
    top = commands.add_parser(
        "top", help="live view of streams, shards, groups and nodes (q quits)"
    )
    top.add_argument(
        "--interval",
        type=positive_float,
        default=INTERVAL_S_DEFAULT,
        metavar="S",
        help=f"seconds between samples (default {INTERVAL_S_DEFAULT}, at least {INTERVAL_S_MIN})",
    )
    top.add_argument(
        "--sort",
        choices=("name", "write", "read", "bytes", "lag"),
        default="write",
        help="initial order of every panel (keys n w r b l change it; default write)",
    )
    top.add_argument(
        "--once",
        action="store_true",
        help="print one frame (rates over one interval) and exit; implied when stdout is not "
        "a terminal",
    )
    top.add_argument("--json", action="store_true", help="with --once: one JSON document")
    add_endpoint(top)
    top.set_defaults(run=_top, handler=run_client_command)


async def _top(args: argparse.Namespace) -> int:
    import anyio

    from streamd_client import connect

    from .gather import Gatherer

    interval_s = max(args.interval, INTERVAL_S_MIN)
    timeout_s = max(REQUEST_TIMEOUT_S_MIN, interval_s)
    async with (
        connect(args.endpoint, connect_timeout_s=5.0, request_timeout_s=timeout_s) as client,
        anyio.create_task_group() as links,
    ):
        gatherer = Gatherer(client, links, endpoint=args.endpoint, timeout_s=timeout_s)
        try:
            if args.once or args.json or not sys.stdout.isatty():
                code = await _once(args, gatherer, interval_s)
            else:
                code = await _live(args, gatherer, interval_s)
        finally:
            with anyio.CancelScope(shield=True):
                await gatherer.aclose()
    return code


async def _once(args: argparse.Namespace, gatherer: Any, interval_s: float) -> int:
    import time

    import trio

    from .model import build_view, view_document
    from .screen import ScreenState, console_for, render

    first = await gatherer.sample()
    await trio.sleep(max(0.0, first.taken_s + interval_s - time.monotonic()))
    view = build_view(first, await gatherer.sample())
    if args.json:
        print(json.dumps(view_document(view), indent=2))
        return EXIT_OK
    state = ScreenState(sort=args.sort)
    console_for().print(render(view, state, endpoint=args.endpoint, height=None))
    return EXIT_OK


async def _live(args: argparse.Namespace, gatherer: Any, interval_s: float) -> int:
    from .live import run_live

    await run_live(gatherer, endpoint=args.endpoint, interval_s=interval_s, sort=args.sort)
    return EXIT_OK
