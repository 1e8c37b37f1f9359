"""``streamd serve``'s security flags (docs/security.md): TLS per listener, the credentials
file, cluster mode's client side, and the safe default.

The safe default: a listener on an address other than loopback needs credentials (the native
one ``--credentials FILE``; the gateway that or its own key pairs), or the explicit
``--insecure-no-auth``; else ``serve`` refuses and says so. The embedded default (loopback,
no flags) stays open, as before. No flag takes a secret: secrets come from files or the
environment only, never from a command line that ``ps`` shows.
"""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path
from typing import Any


def add_serve_security(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group("security (docs/security.md)")
    for prefix, listener in (("", "native"), ("kinesis-", "Kinesis")):
        default = "" if not prefix else " (default: the --tls-* files)"
        group.add_argument(
            f"--{prefix}tls-cert", type=Path, default=None, metavar="FILE",
            help=f"the {listener} listener's certificate chain (PEM): it speaks TLS{default}",
        )  # fmt: skip
        group.add_argument(
            f"--{prefix}tls-key", type=Path, default=None, metavar="FILE",
            help=f"the {listener} listener's private key (PEM)",
        )  # fmt: skip
        group.add_argument(
            f"--{prefix}tls-client-ca", type=Path, default=None, metavar="FILE",
            help=f"require {listener} clients to present a certificate this CA signed (mTLS)",
        )  # fmt: skip
    group.add_argument(
        "--credentials", type=Path, default=None, metavar="FILE",
        help="principals, their access keys and policies (TOML, mode 600; re-read on SIGHUP): "
        "both protocols then authenticate and authorize every request",
    )  # fmt: skip
    group.add_argument(
        "--keyring", type=Path, default=None, metavar="FILE",
        help="keys for encryption at rest (JSON, mode 600; docs/security.md): streams whose "
        "encryption is started store their batches sealed with AES-256-GCM",
    )  # fmt: skip
    group.add_argument(
        "--insecure-no-auth", action="store_true",
        help="listen beyond loopback without credentials (anyone who reaches the port may "
        "read, write and delete)",
    )  # fmt: skip
    for prefix, what in (("cluster", "the other nodes"), ("etcd", "etcd (https)")):
        group.add_argument(
            f"--{prefix}-tls-ca", type=Path, default=None, metavar="FILE",
            help=f"cluster mode: reach {what} with TLS, trusting this CA",
        )  # fmt: skip
        group.add_argument(
            f"--{prefix}-tls-cert", type=Path, default=None, metavar="FILE",
            help=f"cluster mode: this node's client certificate towards {what} (mTLS)",
        )  # fmt: skip
        group.add_argument(f"--{prefix}-tls-key", type=Path, default=None, metavar="FILE")
    group.add_argument(
        "--node-access-key", default=None, metavar="KEY_ID",
        help="cluster mode with --credentials: the key this node signs in to the others with "
        "(its secret is read from the credentials file)",
    )  # fmt: skip


def serve_security_options(args: argparse.Namespace) -> dict[str, Any]:
    """ServerConfig fields. Raises ValueError naming the flag."""
    _pair("--tls-cert", args.tls_cert, "--tls-key", args.tls_key)
    _pair("--kinesis-tls-cert", args.kinesis_tls_cert, "--kinesis-tls-key", args.kinesis_tls_key)
    if args.tls_client_ca is not None and args.tls_cert is None:
        raise ValueError("--tls-client-ca needs --tls-cert and --tls-key (mTLS is TLS first)")
    for prefix in ("cluster", "etcd"):
        ca, cert, key = (getattr(args, f"{prefix}_tls_{part}") for part in ("ca", "cert", "key"))
        if cert is not None and ca is None:
            raise ValueError(f"--{prefix}-tls-cert needs --{prefix}-tls-ca")
        _pair(f"--{prefix}-tls-cert", cert, f"--{prefix}-tls-key", key)
    kinesis_cert, kinesis_key = args.kinesis_tls_cert, args.kinesis_tls_key
    kinesis_ca = args.kinesis_tls_client_ca
    if kinesis_cert is None:
        kinesis_cert, kinesis_key = args.tls_cert, args.tls_key
        kinesis_ca = kinesis_ca if kinesis_ca is not None else args.tls_client_ca
    for flag, path in (
        ("--credentials", args.credentials),
        ("--keyring", args.keyring),
        ("--tls-cert", args.tls_cert),
        ("--tls-key", args.tls_key),
        ("--kinesis-tls-cert", kinesis_cert),
        ("--kinesis-tls-key", kinesis_key),
    ):
        if path is not None and not path.is_file():
            raise ValueError(f"{flag} {path}: no such file")
    return {
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "tls_client_ca": args.tls_client_ca,
        "kinesis_tls_cert": kinesis_cert,
        "kinesis_tls_key": kinesis_key,
        "kinesis_tls_client_ca": kinesis_ca,
        "credentials_file": args.credentials,
        "keyring_file": args.keyring,
        "cluster_tls_ca": args.cluster_tls_ca,
        "cluster_tls_cert": args.cluster_tls_cert,
        "cluster_tls_key": args.cluster_tls_key,
        "etcd_tls_ca": args.etcd_tls_ca,
        "etcd_tls_cert": args.etcd_tls_cert,
        "etcd_tls_key": args.etcd_tls_key,
        "node_access_key": args.node_access_key,
    }


def _pair(flag: str, value: Path | None, other_flag: str, other: Path | None) -> None:
    if (value is None) != (other is None):
        raise ValueError(f"{flag} and {other_flag} go together")


def check_safe_default(
    args: argparse.Namespace, listen_host: str, kinesis_listen_host: str | None
) -> None:
    """Refuse a listener beyond loopback without credentials, unless --insecure-no-auth.
    Raises ValueError saying what to do."""
    if args.insecure_no_auth:
        return
    if args.credentials is None and not is_loopback(listen_host):
        raise ValueError(
            f"--listen {listen_host} is reachable from other hosts and no --credentials FILE is "
            "given: anyone could read, write and delete. Give --credentials FILE "
            "(docs/security.md), listen on 127.0.0.1, or pass --insecure-no-auth"
        )
    gateway_keyed = args.credentials is not None or bool(
        args.kinesis_credentials or args.kinesis_access_key
    )
    if (
        kinesis_listen_host is not None
        and not gateway_keyed
        and not is_loopback(kinesis_listen_host)
    ):
        raise ValueError(
            f"--kinesis-listen {kinesis_listen_host} is reachable from other hosts and no "
            "credentials are given: give --credentials FILE (or --kinesis-credentials FILE), "
            "listen on 127.0.0.1, or pass --insecure-no-auth"
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything
