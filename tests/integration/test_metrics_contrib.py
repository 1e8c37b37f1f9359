"""Every metric the Grafana dashboard and the alert rules name exists on a running server.

A real ``streamd serve`` with ``--metrics-listen``; records are put and read, and a consumer
group processes some of them, so the new series carry values too: reads (lag probes left out),
fsync time, disk space, and the group's lag, which the coordinator keeps current by itself.
Then every PromQL expression of contrib/ is checked name by name against /metrics
(streamd.testing.promql); a misspelt name fails (tests/unit/test_contrib_monitoring.py shows the
check catching one).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
import yaml

from streamd.testing import ServerProcess
from streamd.testing.process import free_ports
from streamd.testing.promql import (
    dashboard_expressions,
    exposed_names,
    missing_names,
    rule_expressions,
)
from streamd_client import connect
from streamd_client.group import GroupWorker

pytestmark = pytest.mark.trio

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
PROMETHEUS_OWN = {"up"}  # series Prometheus makes itself, not the server


@pytest.fixture
def metered() -> Iterator[tuple[ServerProcess, str]]:
    (port,) = free_ports("127.0.0.1", 1)
    args = ["--metrics-listen", f"127.0.0.1:{port}"]
    with ServerProcess(extra_args=args) as server:
        yield server, f"http://127.0.0.1:{port}/metrics"


def scrape(url: str) -> str:
    return httpx.get(url, timeout=5).text


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the one sample of ``name`` whose labels include ``labels``."""
    for line in text.splitlines():
        match = re.match(rf"{name}(\{{[^}}]*\}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            return float(match.group(2))
    return None


async def test_the_dashboard_and_rules_name_only_metrics_a_running_server_has(
    metered: tuple[ServerProcess, str],
) -> None:
    server, url = metered
    async with connect(server.endpoint) as client:
        await client.create_stream("orders", 1)
        await client.put_records("orders", [(b"x", "k")] * 5)
        processed = 0
        async with GroupWorker(
            client, "orders", "billing", read_wait_ms=100, checkpoint_every_s=0.1
        ) as worker:
            async for batch in worker:
                await batch.checkpointer.checkpoint(batch.records[-1])
                processed += len(batch.records)
                if processed >= 5:
                    break
        await client.put_records("orders", [(b"y", "k")] * 7)

    deadline = time.monotonic() + 10
    text = scrape(url)
    while sample(text, "streamd_group_lag_records", group="billing") != 7:
        assert time.monotonic() < deadline, "the group's lag gauge never showed 7 records"
        await trio.sleep(0.2)
        text = scrape(url)

    exposed = exposed_names(text) | PROMETHEUS_OWN
    board = json.loads((CONTRIB / "grafana" / "streamd.json").read_text())
    rules = yaml.safe_load((CONTRIB / "prometheus" / "streamd-alerts.yml").read_text())
    assert missing_names(dashboard_expressions(board), exposed) == {}
    assert missing_names(rule_expressions(rules), exposed) == {}
    # The values behind them are real: 5 records read by the worker (its lag probes excluded).
    assert sample(text, "streamd_records_read_total", stream="orders") == 5
    assert sample(text, "streamd_records_appended_total", stream="orders") == 12
    assert (sample(text, "streamd_fsync_seconds_count") or 0) >= 2
    assert (sample(text, "streamd_request_seconds_count", op="put_records") or 0) == 2
    lag_s = sample(text, "streamd_group_lag_seconds", group="billing", shard="shardId-000000000000")
    assert lag_s is not None and lag_s >= 0
    free, size = (
        sample(text, "streamd_data_dir_free_bytes"),
        sample(text, "streamd_data_dir_size_bytes"),
    )
    assert free is not None and size is not None and 0 < free <= size
    for cluster_only in ("streamd_cluster_shards_under_replicated", "streamd_cluster_nodes_down"):
        assert sample(text, cluster_only) == 0  # declared; the embedded default has no controller
