"""Operator repair commands (registered by app.py); docs/operations.md, "Damaged data".

    streamd admin quarantine-range STREAM SHARD_ID --from SEQ --to SEQ

A read that reaches a damaged stored range answers DATA_CORRUPT with the range's first and last
sequence numbers (the message ends with this very command line). ``quarantine-range`` asks the
server to move that range aside; it prints what it is about to do, then what was done (records,
bytes kept for forensics and where). Reads skip the range from then on.

Exit statuses are the CLI's (common.py): 0 ok, 1 typed error (e.g. INVALID_ARGUMENT for a range
holding intact records), 2 usage, 3 unreachable.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from streamd_client import admin

from .common import EXIT_OK, add_endpoint, connect, run_client_command


def register(commands: Any) -> None:
    """Add ``streamd admin ...`` to the CLI's subparsers."""
    parser = commands.add_parser("admin", help="operator repairs (quarantine damaged records)")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    quarantine = actions.add_parser(
        "quarantine-range",
        help="move a damaged range of a shard aside so that reads go on after it",
        description="Move the damaged records FROM..TO (both included; the sequence numbers a "
        "DATA_CORRUPT error names) aside. Their bytes are kept in a file under the shard's "
        "directory; reads skip them with a visible gap. Intact records are never moved.",
    )
    quarantine.add_argument("name", metavar="STREAM")
    quarantine.add_argument("shard_id", metavar="SHARD_ID")
    quarantine.add_argument("--from", dest="from_sequence", required=True, metavar="SEQ")
    quarantine.add_argument("--to", dest="to_sequence", required=True, metavar="SEQ")
    quarantine.set_defaults(run=_quarantine_range, handler=run_client_command)
    add_endpoint(quarantine)


async def _quarantine_range(args: argparse.Namespace) -> int:
    print(
        f"quarantining {args.name}/{args.shard_id} records {args.from_sequence} to "
        f"{args.to_sequence} ..."
    )
    sys.stdout.flush()
    async with connect(args) as client:
        done = await admin.quarantine_range(
            client,
            args.name,
            args.shard_id,
            from_sequence=args.from_sequence,
            to_sequence=args.to_sequence,
        )
    what = "was already quarantined" if done.already else "quarantined"
    print(
        f"{what}: {done.records} record(s), offsets [{done.base_offset}, {done.next_offset}); "
        f"{done.size_bytes} damaged byte(s) kept in {done.file}"
    )
    print(f"reads of {done.shard_id} now go on at the record after {done.to_sequence}")
    return EXIT_OK
