"""``streamd dev certs DIR``: a local CA and certificates for trying TLS (``cryptography``).

Writes, into DIR: ``ca.pem`` (the CA certificate: give it to clients as --tls-ca, boto3's
verify=, aws --ca-bundle), ``ca.key``, ``server.pem``/``server.key`` (names: localhost,
127.0.0.1, ::1 and any ``hosts`` given; usable for serverAuth and clientAuth, so cluster
nodes can present it to each other and to etcd) and ``client.pem``/``client.key`` (a client
certificate for mutual TLS). Keys are ECDSA P-256 and written 0600. Existing files are never
overwritten: the CA key would be lost. For development only: production certificates come
from your own PKI.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

FILES: Final = ("ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key")
DEFAULT_HOSTS: Final = ("localhost", "127.0.0.1", "::1")


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "streamd dev"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def write_dev_certs(directory: Path, hosts: Sequence[str] = (), days: int = 365) -> list[Path]:
    """Write the files (module doc). Raises FileExistsError (one is there already) or
    OSError."""
    directory.mkdir(parents=True, exist_ok=True)
    existing = [name for name in FILES if (directory / name).exists()]
    if existing:
        raise FileExistsError(f"{directory} already holds {', '.join(existing)}")
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("streamd dev CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    names = list(dict.fromkeys([*DEFAULT_HOSTS, *hosts]))
    leaves = {
        "server": _leaf(ca, ca_key, "streamd server", names, start, end, server=True),
        "client": _leaf(ca, ca_key, "streamd client", [], start, end, server=False),
    }
    written = []
    for name, data, mode in (
        ("ca.pem", ca.public_bytes(serialization.Encoding.PEM), 0o644),
        ("ca.key", _key_pem(ca_key), 0o600),
        *(
            item
            for leaf, (cert, key) in leaves.items()
            for item in (
                (f"{leaf}.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644),
                (f"{leaf}.key", _key_pem(key), 0o600),
            )
        ),
    ):
        _write(directory / name, data, mode)
        written.append(directory / name)
    return written


def _leaf(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    hosts: Sequence[str],
    start: datetime.datetime,
    end: datetime.datetime,
    *,
    server: bool,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    if hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256()), key
