"""Grafana dashboards as code: ``catalog`` defines them with the small typed builder in
``builder``; ``python -m llmgw.dashboards`` writes them to ``dashboards/grafana/``."""

from llmgw.dashboards.builder import Dashboard, Panel, Query, Row, Variable
from llmgw.dashboards.catalog import DASHBOARDS
from llmgw.dashboards.render import render, rendered

__all__ = ["DASHBOARDS", "Dashboard", "Panel", "Query", "Row", "Variable", "render",
           "rendered"]
