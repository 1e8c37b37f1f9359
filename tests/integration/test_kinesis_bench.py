"""The Kinesis benchmark runs end to end against streamd alone and prints positive figures.

No timing assertion: a benchmark prints, it does not pass or fail. This only proves the runner,
the workload and the table work (a tiny workload, one run), and that a target without its npm
install is reported as skipped rather than failing the run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from streamd.bench.kinesis import main


def test_bench_against_streamd_prints_positive_figures(capsys: pytest.CaptureFixture[str]) -> None:
    tiny = ["--put-records-calls", "2", "--batch-records", "20", "--single-puts", "10"]
    assert main([*tiny, "--repeat", "1", "--shards", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (streamd,) = [t for t in doc["targets"] if t["target"].startswith("streamd (")]
    (run,) = streamd["runs"]
    assert run["drained_records"] == 2 * 20 + 1  # the puts and the warm-up record
    for figure in (
        "put_records_per_s",
        "drain_records_per_s",
        "put_record_p50_ms",
        "client_cpu_ms_per_put_record",
    ):
        assert run[figure] > 0
    assert run["put_record_p99_ms"] >= run["put_record_p50_ms"]
    skipped = {t["target"]: t["skipped"] for t in doc["targets"] if t["skipped"]}
    assert set(skipped) == {"kinesalite", "kinesis-mock"}


def test_the_table_names_every_target(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    tiny = ["--put-records-calls", "1", "--batch-records", "5", "--single-puts", "3"]
    assert main([*tiny, "--repeat", "1", "--kinesalite", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    (row,) = [line for line in out.splitlines() if line.startswith("streamd")]
    numbers = [float(n.replace(",", "")) for n in re.findall(r"\d[\d,]*\.?\d*", row.split(")")[1])]
    assert len(numbers) == 8 and all(n > 0 for n in numbers[:4])
    assert "skipped: no node_modules/.bin/kinesalite" in out
    assert "kinesis-mock" in out and "skipped: no --kinesis-mock DIR" in out


def test_bench_through_one_node_of_a_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    """``--cluster 3``: the same workload through node 1 of three (RF 3, etcd), every node's
    CPU counted."""
    tiny = ["--put-records-calls", "2", "--batch-records", "20", "--single-puts", "10"]
    assert main([*tiny, "--repeat", "1", "--shards", "2", "--cluster", "3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (cluster,) = [t for t in doc["targets"] if t["target"].startswith("streamd cluster")]
    assert "3 nodes, RF 3" in cluster["target"]
    (run,) = cluster["runs"]
    assert run["drained_records"] == 2 * 20 + 1 and run["put_failed_records"] == 0
    assert run["target_cpu_ms_per_put_record"] > 0
