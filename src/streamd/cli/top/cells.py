"""``streamd top``'s columns: each panel's headers and the text of each cell (pure).

Numbers are short and fixed in meaning: rates per second with k/M/G steps of 1000 (``12.3k``),
sizes in binary units (``1.5 MiB``), times as ``850 ms``, ``4.2 s``, ``3m 05s``, ``2h 10m``.
A value not known yet (rates on the first frame) is ``-``. screen.py puts these into tables;
keeping them here lets the unit tests read a frame's rows as plain strings.
"""

from __future__ import annotations

from typing import Final

from .model import GroupRow, NodeRow, ShardRow, StreamRow

UNKNOWN: Final = "-"

NODE_COLUMNS: Final = ("node", "address", "state", "led", "held", "disk free", "w rec/s", "r rec/s")
STREAM_COLUMNS: Final = (
    "stream",
    "status",
    "shards",
    "ret h",
    "w rec/s",
    "w B/s",
    "r rec/s",
    "r B/s",
    "thr/s",
    "stored",
    "max lag",
)
GROUP_COLUMNS: Final = ("stream/group", "state", "members", "lag rec", "max lag", "worst shard")
SHARD_COLUMNS: Final = (
    "stream",
    "shard",
    "node",
    "state",
    "w rec/s",
    "w B/s",
    "r rec/s",
    "r B/s",
    "thr/s",
    "records",
    "stored",
)
# The columns each sort key orders by (screen.py marks them in the headers).
SORTED_COLUMNS: Final = {
    "name": {"node", "stream", "stream/group", "shard"},
    "write": {"w rec/s"},
    "read": {"r rec/s"},
    "bytes": {"stored", "disk free"},
    "lag": {"max lag"},
}


def rate(value: float | None) -> str:
    if value is None:
        return UNKNOWN
    if value < 0.05:
        return "0"
    for step, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= step:
            return f"{value / step:.1f}{suffix}"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def size(value: int | float | None) -> str:
    if value is None:
        return UNKNOWN
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def duration_ms(value: int | None) -> str:
    if value is None:
        return UNKNOWN
    if value < 1000:
        return f"{value} ms"
    seconds = value / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def count(value: int | None) -> str:
    return UNKNOWN if value is None else str(value)


def free_share(free: int | None, total: int | None) -> str:
    if free is None or not total:
        return UNKNOWN
    return f"{size(free)} ({100 * free / total:.0f}%)"


def node_cells(row: NodeRow) -> list[str]:
    state = row.state if row.error is None else f"{row.state}: {row.error}"
    return [
        row.node_id,
        row.address,
        state,
        str(row.shards_led),
        count(row.shards_held),
        free_share(row.free_bytes, row.size_bytes),
        rate(row.rates.write_rps),
        rate(row.rates.read_rps),
    ]


def stream_cells(row: StreamRow) -> list[str]:
    shards = str(row.open_shards)
    if row.closed_shards:
        shards += f" (+{row.closed_shards} closed)"
    r = row.rates
    return [
        row.name,
        row.status,
        shards,
        str(row.retention_hours),
        rate(r.write_rps),
        rate(r.write_bps),
        rate(r.read_rps),
        rate(r.read_bps),
        rate(r.throttled_rps),
        size(row.stored_bytes),
        duration_ms(row.lag_ms_max),
    ]


def group_cells(row: GroupRow) -> list[str]:
    return [
        f"{row.stream}/{row.group}",
        row.state,
        count(row.members),
        count(row.lag_records),
        duration_ms(row.lag_ms_max),
        row.worst_shard or UNKNOWN,
    ]


def shard_cells(row: ShardRow) -> list[str]:
    r = row.rates
    return [
        row.stream,
        row.shard_id,
        row.node,
        row.state,
        rate(r.write_rps),
        rate(r.write_bps),
        rate(r.read_rps),
        rate(r.read_bps),
        rate(r.throttled_rps),
        count(row.records),
        size(row.stored_bytes),
    ]
