"""A real Prometheus for tests, and every dashboard panel's PromQL evaluated through it.

Prometheus is Debian's `prometheus` package (`make test` installs it when missing); a
test never installs it. Each :class:`Prometheus` has its own temp dir (config and TSDB),
a free port and 1 s scrapes, and is stopped and removed by ``stop``.

``evaluate_panels`` substitutes what Grafana would (``$__rate_interval``, the dashboards'
variables with the values Prometheus has for them) and polls Prometheus's HTTP API until
each query returns data or the deadline passes.
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from llmgw.dashboards import DASHBOARDS, Dashboard, Panel, Query, Row, Variable
from tests.support import Server, free_port, wait_until

# What Grafana makes of $__rate_interval with Prometheus's default 15 s scrape interval
# (4 x the scrape interval); here it spans all of a test's traffic.
RATE_INTERVAL = "1m"


class Prometheus:
    def __init__(self, jobs: dict[str, list[str]], scrape_interval: str = "1s") -> None:
        """``jobs``: scrape job name -> base URLs whose /metrics it scrapes."""
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("the prometheus binary is missing: `make prometheus` installs "
                        "Debian's package (make test does)")
        self.dir = Path(tempfile.mkdtemp(prefix="llmgw-prometheus-"))
        config = {
            "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval,
                       "evaluation_interval": scrape_interval},
            "scrape_configs": [
                {"job_name": job, "static_configs": [
                    {"targets": [url.split("://", 1)[-1].rstrip("/") for url in urls]}]}
                for job, urls in jobs.items()],
        }
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        try:
            self.server = Server([
                binary, f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                port, "/-/ready", timeout_s=60)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        self.url = self.server.url
        self._client = httpx.Client(base_url=self.url, timeout=10)

    def stop(self) -> None:
        self._client.close()
        self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def query(self, expr: str) -> dict[str, Any]:
        """An instant query: Prometheus's JSON answer, an error included (status "error")."""
        answer: dict[str, Any] = self._client.post("/api/v1/query", data={"query": expr}).json()
        return answer

    def targets_up(self) -> bool:
        active = self._client.get("/api/v1/targets").json()["data"]["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

    def wait_for_targets(self, timeout_s: float = 30) -> None:
        """Until every target has been scraped successfully once."""
        wait_until(self.targets_up, timeout_s, "Prometheus to scrape every target")

    def wait_for_scrape(self, after: float, timeout_s: float = 30) -> None:
        """Until every target has been scraped since ``after`` (a time.time())."""
        def scraped() -> bool:
            answer = self.query("min(timestamp(up))")["data"]["result"]
            return bool(answer) and float(answer[0]["value"][1]) > after
        wait_until(scraped, timeout_s, "Prometheus to scrape every target again")

    def label_values(self, label: str, metric: str) -> list[str]:
        answer = self._client.get(f"/api/v1/label/{label}/values", params={"match[]": metric})
        values: list[str] = answer.json()["data"]
        return sorted(values)


@dataclass(frozen=True)
class Check:
    """One query of one panel, with the variables substituted. ``group``: the checks of
    which one must return data (a panel in a repeated row returns data for at least one
    of the row's values, as a key without 429s shows none); None: only validity."""

    dashboard: str
    panel: str
    expr: str
    group: tuple[str, str, int] | None


def expand(dashboard: Dashboard, panel: Panel, row: Row | None, query: Query,
           values: dict[str, list[str]]) -> Iterator[str]:
    """The query as Grafana sends it, with every variable at "All"; in a repeated row,
    once per value of the row's variable."""
    expr = query.expr.replace("$__rate_interval", RATE_INTERVAL)
    repeat = row.repeat if row is not None else None
    for variable in dashboard.variables:
        if variable.name != repeat:
            expr = _substitute(expr, variable.name, _all(variable, values[variable.name]))
    if repeat is None:
        yield expr
        return
    for value in values[repeat]:
        yield _substitute(expr, repeat, value)


def _all(variable: Variable, values: list[str]) -> str:
    """What Grafana puts for "All": the variable's allValue, else a regex of every value."""
    if variable.all_value is not None:
        return variable.all_value
    return "(" + "|".join(re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\1", v) for v in values) + ")"


def _substitute(expr: str, name: str, value: str) -> str:
    return re.sub(rf"\$(?:{name}\b|\{{{name}\}})", lambda _: value, expr)


def has_data(answer: dict[str, Any]) -> bool:
    """A vector with at least one finite sample (a rate over nothing is NaN: no data)."""
    result = answer.get("data", {}).get("result", [])
    return any(math.isfinite(float(sample["value"][1])) for sample in result)


def checks(prometheus: Prometheus, data: Callable[[Panel], bool],
           valid: Callable[[Panel], bool], timeout_s: float = 30,
           dashboards: tuple[Dashboard, ...] = DASHBOARDS) -> list[Check]:
    """Every query of the panels that must return ``data`` or only be ``valid``,
    expanded; each dashboard variable's values are waited for (its query must find
    some)."""
    out = []
    for dashboard in dashboards:
        chosen = [(panel, row) for panel, row in dashboard.panels()
                  if data(panel) or valid(panel)]
        if not chosen:
            continue
        values: dict[str, list[str]] = {}
        for variable in dashboard.variables:
            def found(variable: Variable = variable,
                      values: dict[str, list[str]] = values) -> bool:
                values[variable.name] = prometheus.label_values(variable.label_name,
                                                                variable.metric)
                return bool(values[variable.name])
            wait_until(found, timeout_s, f"{dashboard.uid}: values of ${variable.name} "
                                         f"({variable.query})")
        for panel, row in chosen:
            for number, query in enumerate(panel.queries):
                group = (dashboard.uid, panel.title, number) if data(panel) else None
                out += [Check(dashboard.uid, panel.title, expr, group)
                        for expr in expand(dashboard, panel, row, query, values)]
    return out


def evaluate_panels(prometheus: Prometheus, data: Callable[[Panel], bool],
                    valid: Callable[[Panel], bool] = lambda panel: True,
                    timeout_s: float = 45) -> list[Check]:
    """Evaluate the queries of every panel selected by ``data`` or ``valid`` through
    Prometheus: each must be valid, and those of ``data`` panels must return data. Polls
    (Prometheus scrapes on its own schedule) until they do or ``timeout_s`` passed, then
    fails the test naming every query invalid or still without data."""
    todo = checks(prometheus, data, valid, timeout_s)
    assert todo, "no panel selected"
    invalid: dict[Check, str] = {}
    validated: set[Check] = set()
    pending = {check.group for check in todo if check.group is not None}
    last: dict[Check, dict[str, Any]] = {}

    def evaluate(check: Check) -> None:
        answer = last[check] = prometheus.query(check.expr)
        if answer.get("status") != "success":
            invalid[check] = f"{answer.get('errorType')}: {answer.get('error')}"
            return
        validated.add(check)
        if check.group is not None and has_data(answer):
            pending.discard(check.group)

    def done() -> bool:
        for check in todo:
            if check not in invalid and (check not in validated or check.group in pending):
                evaluate(check)
        hopeless = {c.group for c in todo if c in invalid}
        return pending <= hopeless

    with contextlib.suppress(AssertionError):  # what is still missing is listed below
        wait_until(done, timeout_s, "every panel's queries to return data")
    problems = [f"{c.dashboard} / {c.panel}: invalid: {why}\n    {c.expr}"
                for c, why in invalid.items()]
    problems += [f"{c.dashboard} / {c.panel}: no data "
                 f"({last.get(c, {}).get('data', {}).get('result')})\n    {c.expr}"
                 for c in todo if c.group in pending and c not in invalid]
    assert problems == [], "\n".join(problems)
    return todo
