"""Server configuration: one frozen dataclass, filled by the CLI, passed down explicitly."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from streamd_client.wire import FRAME_BYTES_MAX_DEFAULT

from .quotas import QUOTAS_OFF, QuotaFigures

FsyncMode = Literal["always", "interval", "never"]
LogFormat = Literal["console", "json"]


@dataclass(frozen=True, slots=True)
class ServerConfig:
    data_dir: Path = field(default_factory=lambda: Path("./streamd-data"))
    listen_host: str = "127.0.0.1"
    listen_port: int = 7070
    # always: ack after fdatasync; interval: fdatasync every fsync_interval_ms, ack after write;
    # never: leave it to the OS. Only "always" keeps invariant 1 (see docs/operations.md).
    fsync: FsyncMode = "always"
    fsync_interval_ms: int = 50
    segment_bytes_max: int = 64 * 1024 * 1024
    segment_age_ms_max: int = 60 * 60 * 1000
    retention_check_interval_ms: int = 60_000
    # Bounds (invariant 8): per shard queue, per connection frames and requests in flight.
    shard_queue_bytes_max: int = 32 * 1024 * 1024
    shard_queue_requests_max: int = 10_000
    commit_batch_bytes_max: int = 4 * 1024 * 1024
    tail_cache_bytes_max: int = 8 * 1024 * 1024
    frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT
    requests_in_flight_max: int = 1024
    # Answers queued for one connection (encoded, or reserved by requests in flight): while
    # over it, the server reads no more of that client's requests (docs/operations.md, limits).
    outbox_bytes_max: int = 32 * 1024 * 1024
    # After a client's EOF (a half-close), how long requests received before it may take to be
    # answered before the connection closes anyway.
    eof_drain_ms: int = 35_000
    # Admission (streamd/frontends/admission.py), for each listener (native and Kinesis) alone.
    connections_max: int = 1024
    connections_per_address_max: int | None = None  # None: a quarter of connections_max
    handshake_timeout_ms: int = 10_000  # native: until hello; gateway: until a first request
    idle_timeout_ms: int = 600_000  # native: no request in flight (long-polls are) this long
    kinesis_idle_timeout_ms: int = 120_000  # gateway: keep-alive between two requests
    shutdown_grace_ms: int = 5_000
    # Per node (docs/operations.md): shards held (open or readable; the open-files limit may
    # allow fewer, see node_limits.py), segment files open at once, I/O threads for all shards.
    shards_max: int = 4096
    segment_fds_max: int = 512
    io_threads_max: int = 16
    metrics_listen: str | None = None  # HOST:PORT for Prometheus /metrics; off when None
    # Kinesis-compatible HTTP gateway (docs/kinesis.md): HOST:PORT, off when None. The CLI's
    # default is 127.0.0.1:4567 (kinesalite's port); a ServerConfig built in code has it off.
    kinesis_listen: str | None = None
    kinesis_region: str = "us-east-1"
    kinesis_account_id: str = "000000000000"
    # (access_key_id, secret) pairs; SigV4 is verified only when at least one is configured.
    kinesis_credentials: tuple[tuple[str, str], ...] = ()
    # Per-shard throughput quotas (docs/operations.md, "Throughput quotas"): off by default, so
    # a benchmark is never throttled by surprise; `serve --quotas kinesis` gives Kinesis' figures.
    quotas: QuotaFigures = QUOTAS_OFF
    # On-demand streams (scaler.py): the most open shards the scaler grows one to, and how often
    # it looks at the measured load.
    on_demand_shards_max: int = 64
    on_demand_interval_ms: int = 1000
    # Operator console (docs/console.md): HOST:PORT, off when None. The CLI's default is
    # 127.0.0.1:8080 in the embedded default (off with --cluster); read-only: no admin forms.
    console_listen: str | None = None
    console_read_only: bool = False
    log_format: LogFormat = "console"
    log_level: str = "info"
    # Cluster mode (docs/cluster.md; `serve --cluster`). None: the embedded default, metadata in
    # <data>/meta.sqlite3. Else the etcd endpoints as "http://HOST:PORT", and then node_id and
    # advertise are set (the CLI refuses --cluster without --node-id).
    cluster: tuple[str, ...] | None = None
    node_id: str | None = None
    # HOST:PORT other nodes and clients reach this node's native listener (and its Kinesis
    # gateway) at: the CLI defaults them to the listen addresses, refusing a wildcard host.
    advertise: str | None = None
    advertise_kinesis: str | None = None  # None: the gateway is off
    # Replicas per shard of a stream created without saying (cluster mode; the embedded
    # default holds one copy).
    replication_factor: int = 1
    cluster_namespace: str = "streamd/"  # etcd key prefix, so clusters (tests) share one etcd
    cluster_id: str | None = None  # None: join whatever cluster etcd holds (or found one)
    # While this node is the controller (controller/decisions.py): a lost node's replicas are
    # replaced after replica_grace_s; a returning node leads again after the delay.
    replica_grace_s: float = 300.0
    preferred_leader_delay_s: float = 10.0
    # Security (docs/security.md). TLS on a listener when its cert and key are set; a client
    # CA set: clients must present a certificate it signed (mutual TLS). The CLI defaults the
    # gateway's files to the native listener's.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    kinesis_tls_cert: Path | None = None
    kinesis_tls_key: Path | None = None
    kinesis_tls_client_ca: Path | None = None
    # Principals, their keys and policies (TOML, mode 600; re-read on SIGHUP). Set: the native
    # handshake must authenticate and every request of both protocols is authorized.
    credentials_file: Path | None = None
    # Keys for encryption at rest (JSON, mode 600; security/keyring.py has the format).
    keyring_file: Path | None = None
    # Cluster mode, the client side of this node's connections to other nodes (cluster_tls_*)
    # and to etcd (etcd_tls_*): the CA that signed their certificates, and this node's
    # certificate (mutual TLS); the access key id this node signs in to the others with (its
    # secret: in credentials_file).
    cluster_tls_ca: Path | None = None
    cluster_tls_cert: Path | None = None
    cluster_tls_key: Path | None = None
    etcd_tls_ca: Path | None = None
    etcd_tls_cert: Path | None = None
    etcd_tls_key: Path | None = None
    node_access_key: str | None = None

    @property
    def listen(self) -> str:
        return f"{self.listen_host}:{self.listen_port}"


def parse_host_port(value: str, default_port: int = 7070) -> tuple[str, int]:
    """'HOST:PORT', ':PORT' or 'HOST' -> (host, port). Brackets for IPv6: '[::1]:7070'."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port = value.rpartition(":")
        if not sep:
            host, port = value, ""
    if port and not (port.isascii() and port.isdigit()):
        raise ValueError(f"expected HOST:PORT with a numeric port, got {value!r}")
    port_number = int(port) if port else default_port
    if not 0 <= port_number <= 65535:
        raise ValueError(f"port out of range (0..65535): {value!r}")
    return host or "127.0.0.1", port_number


ETCD_PORT_DEFAULT = 2379
ETCD_SCHEME = "etcd://"


def parse_cluster_url(value: str) -> tuple[str, ...]:
    """``etcd://HOST:PORT[,HOST:PORT...]`` -> ``("http://HOST:PORT", ...)``.

    The port defaults to etcd's 2379; an IPv6 host goes in brackets (``etcd://[::1]:2379``).
    Raises ValueError saying what is wrong (no scheme, an empty entry, a bad port, a path).
    """
    if not value.startswith(ETCD_SCHEME):
        raise ValueError(f"expected etcd://HOST:PORT[,HOST:PORT...], got {value!r}")
    endpoints: list[str] = []
    for entry in value[len(ETCD_SCHEME) :].split(","):
        entry = entry.strip()
        if not entry:
            raise ValueError(f"an empty etcd endpoint in {value!r}")
        if "/" in entry or "@" in entry or "?" in entry or "#" in entry:
            raise ValueError(f"an etcd endpoint is HOST:PORT (no path, user or scheme): {entry!r}")
        host, port = parse_host_port(entry, ETCD_PORT_DEFAULT)
        if entry.startswith(":") or entry.startswith("[]"):
            raise ValueError(f"an etcd endpoint needs a host: {entry!r}")
        if port == 0:
            raise ValueError(f"an etcd endpoint needs a port other than 0: {entry!r}")
        url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        if url not in endpoints:
            endpoints.append(url)
    return tuple(endpoints)


def is_wildcard_host(host: str) -> bool:
    """True for an address that means "every interface" (nobody can connect *to* it)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return host in ("", "*")
