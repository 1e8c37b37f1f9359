"""``streamd stream create|list|describe|delete|retention|encrypt|decrypt``: stream administration.

``encrypt NAME --key-id K`` seals the stream's new batches at rest with a key of the server's
``--keyring`` (docs/security.md, "Encryption at rest"); ``decrypt NAME`` stores new ones as
plaintext again. Batches already stored keep the key they were sealed with and stay readable.

``stream resize`` is the resharding family's (reshard.py), added to these actions by app.py.
``describe`` prints the shards as a lineage tree (``lineage_lines``): roots (shards without a
parent still in the stream) first, each child indented under its parent; a merged child is drawn
under its first parent and named under the adjacent one. Pure, so the unit tests check it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from typing import Any

from .common import EXIT_OK, add_endpoint, connect, iso_time, run_client_command


def register(commands: Any) -> Any:
    """Add ``streamd stream ...``; returns its actions (app.py adds ``resize`` to them)."""
    stream = commands.add_parser("stream", help="create, list, describe, delete streams")
    actions = stream.add_subparsers(dest="action", required=True, metavar="ACTION")

    create = actions.add_parser("create", help="create a stream")
    create.add_argument("name")
    create.add_argument("--shards", type=int, required=True, metavar="N")
    create.add_argument("--retention-hours", type=int, default=24, metavar="H")
    create.add_argument(
        "--replication-factor",
        type=int,
        default=None,
        metavar="N",
        help="replicas per shard (a cluster; default: the server's --replication-factor)",
    )
    create.set_defaults(run=_stream_create)

    listing = actions.add_parser("list", help="list streams")
    listing.set_defaults(run=_stream_list)

    describe = actions.add_parser("describe", help="show a stream and its shards")
    describe.add_argument("name")
    describe.add_argument("--json", action="store_true", help="print one JSON object")
    describe.set_defaults(run=_stream_describe)

    delete = actions.add_parser("delete", help="delete a stream and all its records")
    delete.add_argument("name")
    delete.set_defaults(run=_stream_delete)

    retention = actions.add_parser("retention", help="change a stream's retention")
    retention.add_argument("name")
    retention.add_argument("--hours", type=int, required=True, metavar="H")
    retention.set_defaults(run=_stream_retention)

    encrypt = actions.add_parser("encrypt", help="seal new batches at rest with a keyring key")
    encrypt.add_argument("name")
    encrypt.add_argument(
        "--key-id",
        required=True,
        metavar="K",
        help="a key of the server's --keyring: alias/NAME, a key id, or a KMS ARN of either",
    )
    encrypt.set_defaults(run=_stream_encrypt)

    decrypt = actions.add_parser("decrypt", help="store new batches as plaintext again")
    decrypt.add_argument("name")
    decrypt.set_defaults(run=_stream_decrypt)

    for sub in (create, listing, describe, delete, retention, encrypt, decrypt):
        add_endpoint(sub)
        sub.set_defaults(handler=run_client_command)
    return actions


async def _stream_create(args: argparse.Namespace) -> int:
    async with connect(args) as client:
        await client.create_stream(
            args.name,
            args.shards,
            retention_hours=args.retention_hours,
            replication_factor=args.replication_factor,
        )
    print(f"created stream {args.name} with {args.shards} shard(s)")
    return EXIT_OK


async def _stream_list(args: argparse.Namespace) -> int:
    async with connect(args) as client:
        names = await client.list_streams()
    for name in names:
        print(name)
    return EXIT_OK


async def _stream_delete(args: argparse.Namespace) -> int:
    async with connect(args) as client:
        await client.delete_stream(args.name)
    print(f"deleted stream {args.name}")
    return EXIT_OK


async def _stream_retention(args: argparse.Namespace) -> int:
    async with connect(args) as client:
        await client.update_retention(args.name, args.hours)
    print(f"stream {args.name}: retention {args.hours} hours")
    return EXIT_OK


async def _stream_encrypt(args: argparse.Namespace) -> int:
    async with connect(args) as client:
        await client.set_encryption(args.name, args.key_id)
    print(f"stream {args.name}: new batches encrypted at rest with key {args.key_id}")
    return EXIT_OK


async def _stream_decrypt(args: argparse.Namespace) -> int:
    async with connect(args) as client:
        await client.set_encryption(args.name, None)
    print(f"stream {args.name}: new batches stored as plaintext (older ones stay encrypted)")
    return EXIT_OK


async def _stream_describe(args: argparse.Namespace) -> int:
    async with connect(args) as client:
        description = await client.describe_stream(args.name)
    document = describe_document(description)
    if args.json:
        print(json.dumps(document, indent=2))
        return EXIT_OK
    shards = document["shards"]
    open_count = sum(s["ending_sequence"] is None for s in shards)
    reshard = document["reshard"]
    status = document["status"]
    if reshard is not None:
        status += (
            f" ({reshard['kind']} to {reshard['target']}: "
            f"{reshard['done']}/{reshard['total']} operations done)"
        )
    print(f"stream           {document['name']}")
    print(f"status           {status}")
    print(f"retention_hours  {document['retention_hours']}")
    key_id = document["encryption_key_id"]
    print(f"encryption       {'NONE' if key_id is None else f'KMS (key {key_id})'}")
    print(f"created          {document['created_time']}")
    print(f"shards           {len(shards)} ({open_count} open, {len(shards) - open_count} closed)")
    for line in lineage_lines(shards):
        print(line)
    return EXIT_OK


def describe_document(description: Any) -> dict[str, Any]:
    """A StreamDescription as JSON-ready data. Hash keys are decimal strings (as Kinesis's),
    since 128-bit integers do not survive most JSON parsers."""
    return {
        "name": description.name,
        "status": description.status,
        "retention_hours": description.retention_hours,
        "encryption_key_id": description.encryption_key_id,
        "created_ms": description.created_ms,
        "created_time": iso_time(description.created_ms),
        "reshard": None if description.reshard is None else description.reshard._asdict(),
        "shards": [
            {
                "shard_id": shard.shard_id,
                "hash_key_start": str(shard.hash_key_start),
                "hash_key_end": str(shard.hash_key_end),
                "starting_sequence": shard.starting_sequence,
                "ending_sequence": shard.ending_sequence,
                "parent_shard_id": shard.parent_shard_id,
                "adjacent_parent_shard_id": shard.adjacent_parent_shard_id,
            }
            for shard in description.shards
        ],
    }


def lineage_lines(shards: Sequence[Mapping[str, Any]]) -> list[str]:
    """The ``describe`` document's shards as an indented lineage tree (module docstring)."""
    by_id = {s["shard_id"]: s for s in shards}
    children: dict[str, list[str]] = {}
    for shard in shards:
        parent = shard["parent_shard_id"]
        if parent in by_id:
            children.setdefault(parent, []).append(shard["shard_id"])
    merged_into = {
        s["adjacent_parent_shard_id"]: s["shard_id"]
        for s in shards
        if s["adjacent_parent_shard_id"] in by_id and s["parent_shard_id"] in by_id
    }
    roots = [s["shard_id"] for s in shards if s["parent_shard_id"] not in by_id]
    # A merged child whose first parent expired hangs under its adjacent parent instead.
    for shard in shards:
        first, adjacent = shard["parent_shard_id"], shard["adjacent_parent_shard_id"]
        if first not in by_id and adjacent in by_id:
            roots.remove(shard["shard_id"])
            children.setdefault(adjacent, []).append(shard["shard_id"])
            merged_into.pop(adjacent, None)
    lines: list[str] = []

    def draw(shard_id: str, depth: int) -> None:
        shard = by_id[shard_id]
        pad = "  " * (depth + 1)
        ending = shard["ending_sequence"]
        lines.append(f"{pad}{shard_id}  {'open' if ending is None else 'closed'}")
        lines.append(f"{pad}  hash keys  {shard['hash_key_start']}..{shard['hash_key_end']}")
        lines.append(f"{pad}  sequences  {shard['starting_sequence']}..{ending or ''}")
        parents = [p for p in (shard["parent_shard_id"], shard["adjacent_parent_shard_id"]) if p]
        if parents:
            lines.append(f"{pad}  parents    {', '.join(parents)}")
        if shard_id in merged_into:
            lines.append(f"{pad}  merged into {merged_into[shard_id]} (drawn under its parent)")
        for child in sorted(children.get(shard_id, [])):
            draw(child, depth + 1)

    for root in sorted(roots):
        draw(root, 0)
    return lines
