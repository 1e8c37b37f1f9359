"""contrib/: the Grafana dashboard and the Prometheus alert rules are well formed.

The names they use are checked against a running server in
tests/integration/test_metrics_contrib.py; here: the PromQL name extraction that check relies
on, the dashboard's shape, the rules' shape, and promtool's own check and unit tests of the
rules (contrib/prometheus/streamd-alerts.test.yml). promtool comes with Debian's ``prometheus``
package, which .ci/run installs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamd.testing.promql import (
    dashboard_expressions,
    exposed_names,
    missing_names,
    promql_metric_names,
    rule_expressions,
)

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
DASHBOARD = CONTRIB / "grafana" / "streamd.json"
RULES = CONTRIB / "prometheus" / "streamd-alerts.yml"
RULES_TEST = CONTRIB / "prometheus" / "streamd-alerts.test.yml"
PROMETHEUS_OWN = {"up"}  # series Prometheus makes itself, not the server


def dashboard_queries() -> list[str]:
    return dashboard_expressions(json.loads(DASHBOARD.read_text()))


def rule_queries() -> list[str]:
    return rule_expressions(yaml.safe_load(RULES.read_text()))


def test_metric_names_are_found_and_functions_labels_keywords_and_durations_are_not() -> None:
    expression = (
        "histogram_quantile(0.99, sum by (le, op) (rate(streamd_request_seconds_bucket"
        '{instance=~"$instance",op!="read"}[$__rate_interval]))) > 1e3 '
        "and on(instance) streamd_controller_active == bool 1 "
        "or max_over_time(streamd_x:recorded[5m:30s] offset 1h) unless vector(0)"
    )
    assert promql_metric_names(expression) == {
        "streamd_request_seconds_bucket",
        "streamd_controller_active",
        "streamd_x:recorded",
    }
    assert promql_metric_names("label_values(streamd_shards, instance)") == {"streamd_shards"}


def test_a_misspelt_name_is_reported_missing() -> None:
    exposed = exposed_names(
        "# HELP streamd_fsync_seconds t\n# TYPE streamd_fsync_seconds histogram\n"
        '# TYPE streamd_records_read_total counter\nstreamd_records_read_total{stream="s"} 3.0\n'
    )
    good = "sum(rate(streamd_fsync_seconds_count[1m])) + sum(rate(streamd_records_read_total[1m]))"
    bad = "sum(rate(streamd_fsync_second_count[1m]))"
    assert missing_names([good, bad], exposed) == {bad: {"streamd_fsync_second_count"}}


def test_the_dashboard_names_only_streamd_metrics_and_has_the_issue_panels() -> None:
    board = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    names = set().union(*(promql_metric_names(e) for e in dashboard_queries()))
    assert names and all(n.startswith("streamd_") for n in names), names
    for needed in (
        "streamd_records_appended_total",  # throughput
        "streamd_records_read_total",
        "streamd_commit_seconds_bucket",  # latency histograms
        "streamd_request_seconds_bucket",
        "streamd_kinesis_request_seconds_bucket",
        "streamd_writes_rejected_total",  # throttling
        "streamd_group_lag_records",  # consumer lag
        "streamd_group_lag_seconds",
        "streamd_cluster_shards_under_replicated",
        "streamd_fsync_seconds_bucket",
    ):
        assert needed in names, needed
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["targets"] and all(t["expr"] for t in panel["targets"])


def test_the_rules_have_the_issue_alerts_each_with_severity_summary_and_duration() -> None:
    rules: list[dict[str, Any]] = [
        r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]
    ]
    alerts = {r["alert"]: r for r in rules}
    assert len(alerts) == len(rules)
    for needed in (
        "StreamdConsumerGroupLagging",
        "StreamdShardUnderReplicated",
        "StreamdDiskNearlyFull",
        "StreamdNodeDown",
    ):
        assert needed in alerts
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        names = promql_metric_names(rule["expr"])
        assert names and all(n.startswith("streamd_") or n in PROMETHEUS_OWN for n in names)


def test_promtool_accepts_the_rules_and_their_unit_tests_pass() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: install the Debian package prometheus (.ci/run does)")
    for command in (["check", "rules", RULES.name], ["test", "rules", RULES_TEST.name]):
        done = subprocess.run(
            [promtool, *command], cwd=RULES.parent, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
