"""Metric names in PromQL expressions and in a /metrics page, for the dashboard and alert tests.

``promql_metric_names`` takes what a Grafana dashboard or a rules file says and returns every
metric it selects. Not a PromQL parser, a tokenizer that is enough for that: strings, label
matchers (``{...}``), ranges and subqueries (``[...]``) and the label lists of ``by``,
``without``, ``on``, ``ignoring``, ``group_left`` and ``group_right`` are cut out; what remains
are identifiers, and those not followed by ``(`` (functions, aggregations) that are not
keywords are metric names. A Grafana ``label_values(metric, label)`` names its metric first.

``exposed_names`` reads the text exposition format: every sample name, and for each declared
family (``# TYPE``) the names its samples take (a histogram's ``_bucket``, ``_sum``,
``_count``), so a labelled family with no sample yet still counts as existing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

_KEYWORDS: Final = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
        "atan2",
    }
)
_STRINGS: Final = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS: Final = re.compile(r"\{[^{}]*\}")
_RANGES: Final = re.compile(r"\[[^\[\]]*\]")
_LABEL_LISTS: Final = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_IDENTIFIER: Final = re.compile(r"(?<![\w.$])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:])(?!\s*\()")
_LABEL_VALUES: Final = re.compile(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,[^()]*\)")
_SUFFIXES: Final = {
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "counter": ("", "_total", "_created"),
}


def promql_metric_names(expression: str) -> set[str]:
    """Every metric name the expression selects (module docstring)."""
    names = set(_LABEL_VALUES.findall(expression))
    text = _STRINGS.sub(" ", expression)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    text = _LABEL_VALUES.sub(" ", text)
    for name in _IDENTIFIER.findall(text):
        if name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def exposed_names(exposition: str) -> set[str]:
    """Every metric name a /metrics page (text format 0.0.4) serves or declares."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            names.add(family)
            names.update(family + suffix for suffix in _SUFFIXES.get(kind.strip(), ()))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def missing_names(expressions: Iterable[str], exposed: set[str]) -> dict[str, set[str]]:
    """Each expression that names a metric not in ``exposed``, with the names it lacks."""
    missing: dict[str, set[str]] = {}
    for expression in expressions:
        absent = promql_metric_names(expression) - exposed
        if absent:
            missing[expression] = absent
    return missing


def dashboard_expressions(board: Mapping[str, Any]) -> list[str]:
    """Every query of a Grafana dashboard (its panels' targets, its query variables)."""
    found = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for variable in board.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            found.append(query["query"])
    return found


def rule_expressions(rules: Mapping[str, Any]) -> list[str]:
    """Every ``expr`` of a Prometheus rules document (as parsed from its YAML)."""
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
