"""The offline replica comparison (streamd.testing.replica_check) on real replica logs.

Three FileLogStores written with the same batches must compare equal; each planted bug must be
reported: one replica with a different (validly checksummed) batch at an offset, one with a
flipped byte in an older batch, one with other batch boundaries, too few whole replicas. A
replica that is merely shorter, or that differs only above the committed end, is not a finding.
It goes through ``check`` too, so a scenario's report carries the findings.
"""

from __future__ import annotations

from pathlib import Path

from streamd.storage.config import LogConfig
from streamd.storage.filestore import FileLogStore
from streamd.storage.logstore import StoredBatch, make_batch
from streamd.testing import History, Seen, check, make_data
from streamd.testing.replica_check import (
    ReplicaSnapshot,
    compare_replicas,
    range_table,
    snapshot_log,
)
from streamd_client.model import make_sequence

SHARD = "shardId-000000000000"
CONFIG = LogConfig(segment_bytes_max=2048)


def batches(count: int, epoch: int = 1) -> list[StoredBatch]:
    return [make_batch(i * 2, 2, epoch, f"batch {i:04d}".encode() * 8) for i in range(count)]


def write_log(directory: Path, content: list[StoredBatch]) -> Path:
    store = FileLogStore(directory, CONFIG)
    store.append(content)
    store.sync()
    store.close()
    return directory


def snapshots(tmp_path: Path, logs: dict[str, list[StoredBatch]]) -> list[ReplicaSnapshot]:
    return [
        snapshot_log(write_log(tmp_path / node, content), node) for node, content in logs.items()
    ]


def test_identical_replicas_compare_equal(tmp_path: Path) -> None:
    same = batches(30)
    found = compare_replicas(
        SHARD, snapshots(tmp_path, dict.fromkeys(("n1", "n2", "n3"), same)), 60
    )
    assert (found.divergent, found.under_replicated, found.damaged) == ([], [], [])
    assert found.compared_batches == 30


def test_a_different_batch_on_one_replica_is_divergent(tmp_path: Path) -> None:
    other = batches(30)
    other[17] = make_batch(34, 2, 1, b"not what the leader wrote")  # valid CRC, other bytes
    found = compare_replicas(
        SHARD, snapshots(tmp_path, {"n1": batches(30), "n2": batches(30), "n3": other}), 60
    )
    assert len(found.divergent) == 1 and found.divergent[0].startswith(f"{SHARD}@34:")


def test_a_flipped_byte_in_an_older_batch_is_found(tmp_path: Path) -> None:
    shots = snapshots(tmp_path, dict.fromkeys(("n1", "n2", "n3"), batches(30)))
    segment = sorted((tmp_path / "n2").glob("*.log"))[0]
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0x04
    segment.write_bytes(bytes(data))
    shots[1] = snapshot_log(tmp_path / "n2", "n2")
    assert shots[1].damaged_at is not None
    found = compare_replicas(SHARD, shots, 60)
    assert found.damaged == [f"{SHARD}@{shots[1].damaged_at} on n2"]
    table = range_table(shots, 60, range_offsets=10)
    assert any("DIFFERENT" in line for line in table), table


def test_other_batch_boundaries_are_divergent(tmp_path: Path) -> None:
    merged = batches(30)
    merged[4:6] = [make_batch(8, 4, 1, b"two batches in one")]
    found = compare_replicas(
        SHARD, snapshots(tmp_path, {"n1": batches(30), "n2": batches(30), "n3": merged}), 60
    )
    assert any("n3" in item for item in found.divergent), found.divergent


def test_a_short_follower_is_fine_but_a_minority_holding_the_prefix_is_not(
    tmp_path: Path,
) -> None:
    full, short = batches(30), batches(20)
    found = compare_replicas(
        SHARD, snapshots(tmp_path / "a", {"n1": full, "n2": full, "n3": short}), 60
    )
    assert (found.divergent, found.under_replicated) == ([], [])
    found = compare_replicas(
        SHARD, snapshots(tmp_path / "b", {"n1": full, "n2": short, "n3": short}), 60
    )
    assert len(found.under_replicated) == 1 and not found.divergent


def test_an_uncommitted_tail_may_differ(tmp_path: Path) -> None:
    tail = [*batches(30)[:25], *(make_batch(50 + 2 * i, 2, 2, b"new epoch") for i in range(5))]
    found = compare_replicas(
        SHARD, snapshots(tmp_path, {"n1": batches(30), "n2": batches(30), "n3": tail}), 50
    )
    assert not found.divergent


def test_check_reports_replica_findings(tmp_path: Path) -> None:
    history = History()
    history.record_sent("k", 0, make_data("k", 0, 40))
    history.record_ack("k", 0, SHARD, make_sequence(0, 59))
    final = {SHARD: [Seen(SHARD, make_sequence(0, 59), "k", history.sent[("k", 0)])]}
    other = batches(30)
    other[3] = make_batch(6, 2, 1, b"planted")
    shots = snapshots(tmp_path, {"n1": batches(30), "n2": batches(30), "n3": other})
    report = check(history, final, replicas={SHARD: shots}, replica_count=3)
    assert not report.ok and len(report.divergent) == 1
    assert report.replica_batches_compared == 30
    shots = snapshots(tmp_path / "ok", dict.fromkeys(("n1", "n2", "n3"), batches(30)))
    assert check(history, final, replicas={SHARD: shots}, replica_count=3).ok


def test_cut_tail_never_cuts_below_what_must_be_kept(tmp_path: Path) -> None:
    from streamd.testing.replica_check import cut_tail

    directory = write_log(tmp_path / "n1", batches(30))
    assert cut_tail(directory, 60, 1 << 20) == 0  # everything must be kept
    cut = cut_tail(directory, 40, 1 << 20)
    assert cut > 0
    shot = snapshot_log(directory, "n1")
    assert shot.end >= 40 and shot.end < 60
    directory = write_log(tmp_path / "n2", batches(30))
    cut_tail(directory, 0, 7)  # a torn tail: recovery cuts the half batch
    assert snapshot_log(directory, "n2").end == 58
