"""The ``streamd`` command's top-level parser: every command family registers its commands.

    streamd serve [--data-dir D] [--listen HOST:PORT] [--fsync always|interval|never]
                  [--log-format console|json] [--log-level LEVEL] [--metrics-listen HOST:PORT]
                  [--kinesis-listen HOST:PORT|off] [--kinesis-region R]
                  [--kinesis-access-key K (secret in $STREAMD_KINESIS_SECRET_KEY)]
                  [--kinesis-credentials FILE] [--console-listen HOST:PORT|off]
                  [--console-read-only] [--connections-max N]
                  [--connections-per-address-max N] [--handshake-timeout-s S]
                  [--idle-timeout-s S] [--kinesis-idle-timeout-s S]
                  [--cluster etcd://HOST:PORT[,...] --node-id ID [--advertise HOST:PORT]
                   [--advertise-kinesis HOST:PORT] [--cluster-namespace NS] [--cluster-id ID]]
    streamd stream create NAME --shards N [--retention-hours H]
    streamd stream list | describe NAME [--json] | delete NAME | retention NAME --hours H
    streamd stream resize NAME --shards N [--no-wait]      (cli/reshard.py)
    streamd shard split NAME SHARD_ID [--at HASH_KEY] | merge NAME SHARD_ID ADJACENT_SHARD_ID
    streamd put NAME (--partition-key K | --random-key) [--json]   (a record per stdin line)
    streamd read NAME [--shard ID] [--from POS] [--limit N] [--follow] [--json | --raw]
                 [--binary base64|hex]                 (cli/records.py)
    streamd --version
    streamd bench produce|consume [--json] ...              (cli/bench.py)
    streamd group consume|list|describe|reset|delete ...    (cli/groups.py)
    streamd admin quarantine-range NAME SHARD_ID --from SEQ --to SEQ  (cli/admin.py)
    streamd cluster status [--cluster etcd://HOST:PORT] [--cluster-namespace NS] [--json]
    streamd dev cluster [--nodes N] [--dir DIR] [--base-port P] [--kinesis-base-port P]
                        [--etcd-port P]                 (cli/cluster.py, cli/dev.py)
    streamd top [--interval S] [--sort KEY] [--once] [--json]   (cli/top/)

Client commands take ``--endpoint HOST:PORT``, before or after the command (default:
$STREAMD_ENDPOINT, else 127.0.0.1:7070; see cli/endpoint.py), and run the async client
(streamd_client) on trio; the server is imported only by ``serve``, so client commands start
fast.

One module per command family (serve, streams, records, groups, reshard, admin, bench, cluster,
dev), each with a ``register``; what they share (exit codes, errors, the endpoint option,
connecting, running a client command, times) is common.py's, and the exit statuses are listed
there.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from .. import __version__
from . import admin, bench, cluster, dev, groups, records, reshard, serve, streams, top
from . import endpoint as cli_endpoint
from .common import EXIT_INTERRUPTED, EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamd",
        description="streamd: a durable, sharded, Kinesis-style log service.",
        # No prefixes of global options: `bench produce --tls` is not an abbreviation of the
        # global --tls-ca/--tls-cert/--tls-key.
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"streamd {__version__}")
    cli_endpoint.add_global(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.register(commands)  # streamd serve
    stream_actions = streams.register(commands)  # streamd stream create|list|...
    records.register(commands)  # streamd put, streamd read
    bench.register(commands)  # streamd bench produce|consume|kinesis
    groups.register(commands)  # streamd group ...
    reshard.register(commands, stream_actions)  # streamd shard split|merge, stream resize
    admin.register(commands)  # streamd admin quarantine-range
    cluster.register(commands)  # streamd cluster status
    dev.register(commands)  # streamd dev cluster
    top.register(commands)  # streamd top (cli/top/)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line as ``main`` runs it, ``endpoint`` resolved (streamd/cli/endpoint.py)."""
    args = build_parser().parse_args(argv)
    cli_endpoint.resolve(args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of our stdout went away (``streamd read s | head``): not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
