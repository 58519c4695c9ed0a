"""A small typed builder for Grafana dashboards: panels of Prometheus queries, rows,
template variables, and the JSON Grafana imports (schema 39), laid out on its 24-column
grid. Only what llmgw's dashboards use; every dashboard in ``dashboards/grafana/`` is
written from the definitions in ``llmgw.dashboards.catalog`` by ``python -m
llmgw.dashboards``.

Queries may use Grafana's ``$__rate_interval`` and the dashboard's variables (``$model``);
``to_json`` refuses a query that names an ``llmgw_*`` metric llmgw does not define, so a
renamed metric fails the build, not a dashboard in production.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

GRID_COLUMNS = 24
SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# What a query's data needs beyond a gateway and any engine: "vllm" engines scraped by
# the same Prometheus (their own vllm:* metrics) or serving through the gateway (KV
# events, prefix-cache counters, cached tokens in usage).
Needs = Literal["vllm"]
_LLMGW_METRIC = re.compile(r"\bllmgw_[a-z_]+")
_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


@dataclass(frozen=True, slots=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True, slots=True)
class Panel:
    """A time-series panel."""

    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    width: int = 12
    height: int = 8
    description: str = ""
    needs: Needs | None = None


@dataclass(frozen=True, slots=True)
class Row:
    """Starts a new line of panels; ``repeat``: a variable the row (and the panels up to
    the next row) repeats for, once per selected value."""

    title: str
    repeat: str | None = None


@dataclass(frozen=True, slots=True)
class Variable:
    """A query variable: the values of ``label`` on series of ``metric``, several or all
    selectable. ``all_value``: what "All" stands for in queries (None: Grafana's regex of
    every value, ``(a|b|...)``)."""

    name: str
    label: str
    metric: str
    label_name: str
    all_value: str | None = ".*"

    @property
    def query(self) -> str:
        return f"label_values({self.metric}, {self.label_name})"


@dataclass(frozen=True, slots=True)
class Dashboard:
    uid: str
    title: str
    items: tuple[Panel | Row, ...]
    variables: tuple[Variable, ...] = ()
    description: str = ""

    @property
    def file_name(self) -> str:
        return f"{self.uid}.json"

    def panels(self) -> list[tuple[Panel, Row | None]]:
        """Every panel with the row it sits in (None above the first row)."""
        row: Row | None = None
        out: list[tuple[Panel, Row | None]] = []
        for item in self.items:
            if isinstance(item, Row):
                row = item
            else:
                out.append((item, row))
        return out

    def to_json(self) -> dict[str, Any]:
        unknown = sorted({name for panel, _ in self.panels() for query in panel.queries
                          for name in _LLMGW_METRIC.findall(query.expr)} - defined_metrics())
        if unknown:
            raise ValueError(f"dashboard {self.uid} queries undefined metrics: {unknown}")
        board: dict[str, Any] = {
            "title": self.title, "uid": self.uid, "schemaVersion": SCHEMA_VERSION,
            "version": 1, "time": {"from": "now-1h", "to": "now"}, "refresh": "10s",
            "tags": ["llmgw"],
            "templating": {"list": [
                {"name": "datasource", "label": "Data source", "type": "datasource",
                 "query": "prometheus"},
                *(_variable(v) for v in self.variables)]},
            "panels": _layout(self.items),
        }
        if self.description:
            board["description"] = self.description
        return board


def _variable(variable: Variable) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": variable.name, "label": variable.label, "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": variable.query, "refId": variable.name},
        "definition": variable.query, "multi": True, "includeAll": True,
        "current": {"text": "All", "value": "$__all"}, "refresh": 2, "sort": 1,
    }
    if variable.all_value is not None:
        out["allValue"] = variable.all_value
    return out


def _layout(items: Iterable[Panel | Row]) -> list[dict[str, Any]]:
    """Panels left to right, wrapping at the grid's width; a row starts a new line."""
    out: list[dict[str, Any]] = []
    x = y = line_height = 0
    for number, item in enumerate(items, start=1):
        if isinstance(item, Row):
            y, x, line_height = y + line_height, 0, 0
            row: dict[str, Any] = {"id": number, "type": "row", "title": item.title,
                                   "gridPos": {"h": 1, "w": GRID_COLUMNS, "x": 0, "y": y},
                                   "collapsed": False, "panels": []}
            if item.repeat is not None:
                row["repeat"] = item.repeat
            out.append(row)
            y += 1
            continue
        if x + item.width > GRID_COLUMNS:
            y, x, line_height = y + line_height, 0, 0
        out.append(_panel(number, item, x, y))
        x += item.width
        line_height = max(line_height, item.height)
    return out


def _panel(number: int, panel: Panel, x: int, y: int) -> dict[str, Any]:
    targets = []
    for ref, query in zip(_ref_ids(), panel.queries, strict=False):
        target = {"refId": ref, "expr": query.expr}
        if query.legend:
            target["legendFormat"] = query.legend
        targets.append(target)
    out: dict[str, Any] = {
        "id": number, "type": "timeseries", "title": panel.title,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "targets": targets,
    }
    if panel.description:
        out["description"] = panel.description
    return out


def _ref_ids() -> Iterable[str]:
    return (chr(ord("A") + i) for i in range(26))


@cache
def defined_metrics() -> frozenset[str]:
    """Every series name llmgw exposes (``_total``, ``_bucket`` and friends included)."""
    from llmgw.metrics import Metrics

    families = {family.name for family in Metrics().registry.collect()}
    return frozenset(families | {f + suffix for f in families for suffix in _SUFFIXES})
