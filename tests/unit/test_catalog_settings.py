"""The stream settings the Kinesis API changes, in the catalog document: round trip, and a
document written before those fields existed reads with their defaults."""

from __future__ import annotations

from dataclasses import asdict, replace

import cbor2

from streamd.catalog import StreamMeta
from streamd_client.model import RECORD_DATA_BYTES_MAX


def test_settings_round_trip_through_the_document() -> None:
    meta = replace(
        StreamMeta.new("s", 2, 24, now_ms=1),
        shard_level_metrics=("IncomingBytes", "IteratorAgeMilliseconds"),
        resource_policy='{"Statement": []}',
        max_record_bytes=10 * 1024 * 1024,
    )
    assert StreamMeta.decode(meta.encode()) == meta


def test_a_document_from_before_the_settings_reads_with_defaults() -> None:
    meta = StreamMeta.new("s", 1, 24, now_ms=1)
    doc = asdict(meta)
    for field in ("shard_level_metrics", "resource_policy", "max_record_bytes"):
        del doc[field]
    old = StreamMeta.decode(cbor2.dumps(doc))
    assert old == meta
    assert (old.shard_level_metrics, old.resource_policy) == ((), None)
    assert old.max_record_bytes == RECORD_DATA_BYTES_MAX
