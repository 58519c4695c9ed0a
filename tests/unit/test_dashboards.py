"""Every metric a dashboard queries must be one that llmgw/metrics/ defines."""

from __future__ import annotations

import json
import re
from pathlib import Path

from llmgw.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def defined_metric_names() -> set[str]:
    families = {family.name for family in Metrics().registry.collect()}
    return families | {family + suffix for family in families for suffix in _SUFFIXES}


def queried_metric_names(dashboard: dict[str, object]) -> set[str]:
    exprs = re.findall(r'"expr":\s*"((?:[^"\\]|\\.)*)"', json.dumps(dashboard))
    return {name for expr in exprs for name in re.findall(r"\bllmgw_[a-z_]+", expr)}


def test_dashboards_query_only_defined_metrics() -> None:
    dashboards = sorted((ROOT / "dashboards" / "grafana").glob("*.json"))
    assert dashboards
    defined = defined_metric_names()
    for path in dashboards:
        queried = queried_metric_names(json.loads(path.read_text()))
        assert queried, f"{path.name} queries no llmgw metric"
        missing = sorted(queried - defined)
        assert missing == [], f"{path.name} queries undefined metrics"


def test_every_metric_is_prefixed_and_has_help() -> None:
    for family in Metrics().registry.collect():
        assert family.name.startswith("llmgw_")
        assert family.documentation
