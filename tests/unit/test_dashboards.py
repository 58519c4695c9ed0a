"""The Grafana dashboards come from one source, llmgw/dashboards/catalog.py: the committed
JSON is exactly what it generates, every metric a panel queries is defined in
llmgw/metrics/, and every metric defined there has a panel. (Whether each query is valid
PromQL and returns data: tests/e2e/test_dashboards_prometheus.py, with a real
Prometheus.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

from llmgw.dashboards import DASHBOARDS
from llmgw.dashboards.builder import GRID_COLUMNS
from llmgw.dashboards.render import rendered, stale
from llmgw.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "dashboards" / "grafana"
_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def family_names() -> set[str]:
    return {family.name for family in Metrics().registry.collect()}


def defined_metric_names() -> set[str]:
    families = family_names()
    return families | {family + suffix for family in families for suffix in _SUFFIXES}


def committed_exprs() -> dict[str, list[str]]:
    out = {}
    for path in sorted(GRAFANA.glob("*.json")):
        board = json.loads(path.read_text())
        out[path.name] = [target["expr"] for panel in board["panels"]
                          for target in panel.get("targets", [])]
    return out


def queried_metric_names(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in re.findall(r"\bllmgw_[a-z_]+", expr)}


def test_the_committed_dashboards_are_the_generated_ones() -> None:
    assert stale(GRAFANA) == [], "regenerate them: python -m llmgw.dashboards"
    assert sorted(p.name for p in GRAFANA.glob("*.json")) == sorted(rendered())


def test_dashboards_query_only_defined_metrics() -> None:
    defined = defined_metric_names()
    for name, exprs in committed_exprs().items():
        queried = queried_metric_names(exprs)
        assert queried, f"{name} queries no llmgw metric"
        assert sorted(queried - defined) == [], f"{name} queries undefined metrics"


def test_every_metric_is_on_a_dashboard() -> None:
    """A new metric gets a panel in llmgw/dashboards/catalog.py (then regenerate)."""
    queried = {re.sub(r"_(bucket|count|sum|total)$", "", name)
               for exprs in committed_exprs().values() for name in queried_metric_names(exprs)}
    assert sorted(family_names() - queried) == []


def test_every_variable_a_query_uses_is_defined() -> None:
    for dashboard in DASHBOARDS:
        names = {v.name for v in dashboard.variables}
        for panel, row in dashboard.panels():
            used = {name for query in panel.queries
                    for name in re.findall(r"\$\{?(\w+)", query.expr)} - {"__rate_interval"}
            assert used <= names, f"{dashboard.uid} / {panel.title}: {used - names}"
            if row is not None and row.repeat is not None:
                assert row.repeat in names


def test_panels_fit_the_grid_without_overlapping() -> None:
    for dashboard in DASHBOARDS:
        taken: set[tuple[int, int]] = set()
        panels = dashboard.to_json()["panels"]
        assert len({p["id"] for p in panels}) == len(panels)
        for panel in panels:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]
            cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                     for y in range(grid["y"], grid["y"] + grid["h"])}
            assert not cells & taken, f"{dashboard.uid} / {panel['title']} overlaps"
            taken |= cells


def test_every_metric_is_prefixed_and_has_help() -> None:
    for family in Metrics().registry.collect():
        assert family.name.startswith("llmgw_")
        assert family.documentation
