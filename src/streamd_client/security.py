"""What a client connection needs to be secure: a TLS context and the credentials to sign in.

``connect("tls://host:port", ca=..., cert=..., key=..., credentials=...)`` builds one
``Security`` and hands it to every connection it opens (the bootstrap connection and the
router's connections to shard leaders alike), so a cluster is reached the same way everywhere.

TLS uses the standard library's ``ssl`` through anyio's TLSStream. ``client_context`` verifies
the server's certificate against ``ca`` (a PEM file; the system's trust store when None) and
its name against the host connected to (``check_hostname``): a wrong CA or a wrong name fails
the handshake. ``cert``/``key`` present a client certificate (mutual TLS). TLS 1.2 is the floor.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from os import PathLike
from typing import Final

from .auth import Credentials
from .errors import InvalidArgumentError

TLS_SCHEME: Final = "tls://"
PathArg = str | PathLike[str]


@dataclass(frozen=True, slots=True)
class Security:
    """TLS (None: plaintext) and the credentials of the handshake (None: none sent)."""

    tls: ssl.SSLContext | None = None
    credentials: Credentials | None = None


def client_context(
    ca: PathArg | None = None, cert: PathArg | None = None, key: PathArg | None = None
) -> ssl.SSLContext:
    """A client TLS context that verifies the server (certificate and name).

    Raises: InvalidArgumentError (a file that cannot be read or is not PEM; key without cert).
    """
    if key is not None and cert is None:
        raise InvalidArgumentError("a client key needs its certificate (cert=)")
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if cert is not None:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise InvalidArgumentError(f"TLS files: {_reason(exc)}") from None
    return context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc)


def split_scheme(endpoint: str) -> tuple[bool, str]:
    """``"tls://h1:7070,h2:7070"`` -> (True, "h1:7070,h2:7070"); no scheme -> (False, same)."""
    if isinstance(endpoint, str) and endpoint.startswith(TLS_SCHEME):
        return True, endpoint[len(TLS_SCHEME) :]
    return False, endpoint


def security_for(
    endpoint: str,
    *,
    ca: PathArg | None = None,
    cert: PathArg | None = None,
    key: PathArg | None = None,
    tls: ssl.SSLContext | None = None,
    credentials: Credentials | tuple[str, str] | None = None,
) -> tuple[str, Security]:
    """The bootstrap list without its scheme, and the Security ``connect``'s options describe.

    TLS is on with a ``tls://`` endpoint (or a ready ``tls`` context); ``ca``/``cert``/``key``
    without either are refused rather than silently sending plaintext.
    Raises: InvalidArgumentError.
    """
    use_tls, addresses = split_scheme(endpoint)
    if isinstance(credentials, tuple):
        credentials = Credentials(*credentials)
    if tls is not None:
        if ca is not None or cert is not None or key is not None:
            raise InvalidArgumentError("give either tls= (a context) or ca=/cert=/key=, not both")
        return addresses, Security(tls, credentials)
    if not use_tls:
        if ca is not None or cert is not None or key is not None:
            raise InvalidArgumentError(
                "ca=/cert=/key= need a tls:// endpoint (tls://host:port): without it the "
                "connection would be plaintext"
            )
        return addresses, Security(None, credentials)
    return addresses, Security(client_context(ca, cert, key), credentials)
