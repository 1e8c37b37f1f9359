"""Server-side TLS for a listener: contexts from PEM files, swapped on SIGHUP, one handshake
per accepted connection.

How it works: ``ServerTls`` holds the current ``ssl.SSLContext`` built from ``cert``/``key``
(and ``client_ca``: then a client certificate signed by it is required, mutual TLS).
``reload()`` builds a new context from the files and swaps it in only if that worked, so a
half-written certificate never takes the listener down; connections already open keep the
context they were accepted with (nothing is dropped), new ones get the new certificate.

``secure(stream, peer)`` runs on each accepted socket before its protocol does. It first peeks
(``MSG_PEEK``, nothing consumed) at the first byte: a TLS connection starts with a handshake
record (0x16). Anything else is a plaintext client on a TLS listener: it is logged
(``tls.plaintext_refused``), sent the listener's ``plaintext_refusal`` bytes (native: an error
frame TLS_REQUIRED; gateway: an HTTP 400 saying to use https), and closed. Then the handshake,
bounded by ``handshake_timeout_s``; a failure (wrong CA, no client certificate, garbage) is
logged as ``tls.handshake_failed`` with the reason, and the connection closed. The stream
returned is a ``trio.SSLStream``; ALPN can be offered by setting ``alpn_protocols`` (its
``selected_alpn_protocol()`` then says what the client picked).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog
import trio

from ..startup import StartupError

log = structlog.get_logger(__name__)

TLS_HANDSHAKE_RECORD: Final = 0x16
_CLOSE_TIMEOUT_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A listener's PEM files; ``client_ca`` set: clients must present a certificate it
    signed."""

    cert: Path
    key: Path
    client_ca: Path | None = None


def server_context(files: TlsFiles, alpn_protocols: Sequence[str] = ()) -> ssl.SSLContext:
    """A server context (TLS 1.2+). Raises ValueError naming the file and what is wrong."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(files.cert, files.key)
        if files.client_ca is not None:
            context.load_verify_locations(cafile=files.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except OSError as exc:  # ssl.SSLError is one
        named = exc.filename or f"{files.cert} / {files.key}"
        reason = exc.strerror or getattr(exc, "reason", None) or str(exc)
        raise ValueError(f"cannot load TLS files ({named}): {reason}") from None
    if alpn_protocols:
        context.set_alpn_protocols(list(alpn_protocols))
    return context


class ServerTls:
    """One listener's TLS: the current context and the per-connection handshake."""

    def __init__(
        self,
        files: TlsFiles,
        *,
        listener: str,
        plaintext_refusal: Callable[[], bytes],
        handshake_timeout_s: float,
        alpn_protocols: Sequence[str] = (),
    ) -> None:
        assert handshake_timeout_s > 0
        self.files = files
        self.listener = listener
        self.plaintext_refusal = plaintext_refusal
        self.handshake_timeout_s = handshake_timeout_s
        self.alpn_protocols = tuple(alpn_protocols)
        try:
            self.context = server_context(files, self.alpn_protocols)
        except ValueError as exc:
            raise StartupError(f"--{_flag_prefix(listener)}tls-cert/-key: {exc}") from None
        self.reloads = 0

    def reload(self) -> bool:
        """Re-read the files (SIGHUP). Keeps the old context if the new files do not load."""
        try:
            self.context = server_context(self.files, self.alpn_protocols)
        except ValueError as exc:
            log.error("tls.reload_failed", listener=self.listener, error=str(exc))
            return False
        self.reloads += 1
        log.info("tls.reloaded", listener=self.listener, cert=str(self.files.cert))
        return True

    async def secure(
        self, stream: trio.SocketStream, peer: str
    ) -> trio.SSLStream[trio.SocketStream] | None:
        """The TLS stream over ``stream``, or None (refused and closed; the reason logged)."""
        context = self.context  # the one in force when the connection came
        with trio.move_on_after(self.handshake_timeout_s):
            first = await _peek_byte(stream)
            if first is None:
                await _close(stream)
                return None
            if first != TLS_HANDSHAKE_RECORD:
                log.warning(
                    "tls.plaintext_refused",
                    listener=self.listener,
                    peer=peer,
                    reason="the client sent plaintext to a TLS listener",
                )
                await self._refuse_plaintext(stream)
                return None
            secured = trio.SSLStream(stream, context, server_side=True)
            try:
                await secured.do_handshake()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                cause = exc.__cause__
                reason = getattr(cause, "reason", None) or str(cause or exc) or "peer closed"
                log.warning(
                    "tls.handshake_failed", listener=self.listener, peer=peer, reason=reason
                )
                await _close(stream)
                return None
            return secured
        log.info("tls.handshake_timeout", listener=self.listener, peer=peer)
        await _close(stream)
        return None

    async def _refuse_plaintext(self, stream: trio.SocketStream) -> None:
        try:
            await stream.send_all(self.plaintext_refusal())
            await stream.send_eof()
            with trio.move_on_after(0.2):  # read what it sent, so the close is not a reset
                while await stream.receive_some(65536):
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        await _close(stream)


async def _peek_byte(stream: trio.SocketStream) -> int | None:
    """The first byte the client sent, left in the socket; None at EOF."""
    try:
        data = await stream.socket.recv(1, socket.MSG_PEEK)
    except OSError:
        return None
    return data[0] if data else None


async def _close(stream: trio.abc.Stream) -> None:
    with trio.move_on_after(_CLOSE_TIMEOUT_S) as scope:
        scope.shield = True
        await trio.aclose_forcefully(stream)


def _flag_prefix(listener: str) -> str:
    return "" if listener == "native" else f"{listener}-"
