"""Gateway credentials: the access-key pairs SigV4 requests are checked against.

A secret is read from a file or from the environment, never from the command line (a command
line shows in ``ps`` and in shell history): one pair is ``--kinesis-access-key KEY_ID`` with the
secret in ``$STREAMD_KINESIS_SECRET_KEY``; any number come from a file in the AWS
shared-credentials format (``~/.aws/credentials``: INI sections with ``aws_access_key_id`` and
``aws_secret_access_key``), so an operator can point the gateway at the very file their SDKs
already use. Every section that has both keys adds a pair; a file with none is an error, not a
silently open gateway.
"""

from __future__ import annotations

import configparser
from collections.abc import Mapping
from pathlib import Path
from typing import Final

SECRET_ENV: Final = "STREAMD_KINESIS_SECRET_KEY"


class CredentialsError(ValueError):
    """The credentials file is unreadable, malformed, or holds no key pair."""


def load_credentials_file(path: Path) -> tuple[tuple[str, str], ...]:
    """``(access_key_id, secret)`` pairs from an AWS credentials file. Raises CredentialsError."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as file:
            parser.read_file(file)
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        raise CredentialsError(f"cannot read credentials file {path}: {exc}") from None
    pairs: list[tuple[str, str]] = []
    for section in parser.sections():
        key_id = parser.get(section, "aws_access_key_id", fallback="").strip()
        secret = parser.get(section, "aws_secret_access_key", fallback="").strip()
        if key_id and secret:
            pairs.append((key_id, secret))
    if not pairs:
        raise CredentialsError(
            f"credentials file {path} has no section with aws_access_key_id and "
            "aws_secret_access_key"
        )
    return tuple(pairs)


def secret_from_environment(environ: Mapping[str, str]) -> str:
    """The secret for ``--kinesis-access-key`` from ``$STREAMD_KINESIS_SECRET_KEY``.
    Raises CredentialsError when it is unset or blank."""
    secret = environ.get(SECRET_ENV, "").strip()
    if not secret:
        raise CredentialsError(
            f"--kinesis-access-key needs its secret in ${SECRET_ENV} "
            "(or use --kinesis-credentials FILE)"
        )
    return secret
