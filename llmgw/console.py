"""What the CLI shows an operator: replicas starting under ``llmgw up`` (a live table on
a terminal, plain log lines otherwise) and the fleet at a glance for ``llmgw status``
(the gateway's ``GET /admin/status`` as text)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Callable
from typing import Any, TextIO

from llmgw.fleet.progress import ReplicaStart, StartupProgress

log = logging.getLogger("llmgw.startup")
_REDRAW_S = 0.5


def is_terminal(stream: TextIO) -> bool:
    """A terminal that moves its cursor as told (not a file, a pipe or TERM=dumb)."""
    return stream.isatty() and os.environ.get("TERM", "dumb") != "dumb"


class StartupView:
    """Replicas starting while ``llmgw up`` brings its engines up. ``live``: a table
    redrawn in place (each replica's phase and seconds; log records print above it),
    else one log line per change. Attach it before the fleet starts, ``finish`` after."""

    def __init__(self, stream: TextIO, *, live: bool,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.live, self._clock = stream, live, clock
        self.rows: dict[str, ReplicaStart] = {}  # copies, in launch order
        # A failed replica's error (shown with its log tail) -> the replica.
        self.shown_errors: dict[str, str] = {}
        self._began = clock()
        self._drawn = 0
        self._progress: StartupProgress | None = None
        self._wrapped: list[tuple[logging.Handler, logging.Handler]] = []
        self._ticker: asyncio.Task[None] | None = None

    # --- lifecycle --------------------------------------------------------------

    def attach(self, progress: StartupProgress) -> None:
        self._progress = progress
        progress.listeners.append(self.update)
        if not self.live:
            return
        root = logging.getLogger()
        for handler in list(root.handlers):  # log records print above the table
            wrapper = _AboveTheView(handler, self)
            root.removeHandler(handler)
            root.addHandler(wrapper)
            self._wrapped.append((handler, wrapper))
        with contextlib.suppress(RuntimeError):  # no loop: redrawn on changes only
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    def finish(self) -> None:
        """Stop showing: the last state stays on screen (live), or a summary line."""
        if self._progress is not None:
            with contextlib.suppress(ValueError):
                self._progress.listeners.remove(self.update)
            self._progress = None
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self.live:
            self._redraw()
            self._drawn = 0  # the table stays; what follows prints below it
            root = logging.getLogger()
            for handler, wrapper in self._wrapped:
                root.removeHandler(wrapper)
                root.addHandler(handler)
            self._wrapped = []
        elif self.rows:
            log.info("%s", self.summary())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(_REDRAW_S)  # the seconds counters move
            self._redraw()

    # --- what changed -----------------------------------------------------------

    def update(self, entry: ReplicaStart) -> None:
        self.rows[entry.id] = dataclasses.replace(entry)
        failed = entry.phase == "failed" and entry.error is not None
        if failed:
            assert entry.error is not None
            self.shown_errors[entry.error] = entry.id
        if not self.live:
            log.log(logging.ERROR if failed else logging.INFO, "%s", _plain(entry))
            return
        if failed:
            self.above(_plain(entry))
        else:
            self._redraw()

    def summary(self) -> str:
        ready = sum(r.phase == "ready" for r in self.rows.values())
        failed = sum(r.phase == "failed" for r in self.rows.values())
        total = len(self.rows)
        seconds = self._clock() - self._began
        if failed:
            return f"{failed} of {total} replica(s) failed to start ({ready} ready)"
        if ready == total:
            return f"{total} replica(s) ready in {seconds:.1f}s"
        return f"starting {total} replica(s): {ready} ready, {seconds:.1f}s"

    # --- drawing (live) ---------------------------------------------------------

    def above(self, text: str) -> None:
        """Print ``text`` above the table, which is drawn again below it."""
        self._clear()
        self.stream.write(text.rstrip("\n") + "\n")
        self._draw()

    def _lines(self) -> list[str]:
        now = self._clock()
        width = max((len(r.id) for r in self.rows.values()), default=0)
        lines = [self.summary()]
        for row in self.rows.values():
            lines.append(f"  {row.id:<{width}}  {_status(row, now)}")
        columns = shutil.get_terminal_size((100, 24)).columns
        return [line[: max(columns - 1, 20)] for line in lines]

    def _draw(self) -> None:
        if not self.rows:
            return
        lines = self._lines()
        self.stream.write("".join(line + "\n" for line in lines))
        self.stream.flush()
        self._drawn = len(lines)

    def _clear(self) -> None:
        if self._drawn:
            # Up to the table's first line, then erase to the end of the screen.
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _redraw(self) -> None:
        self._clear()
        self._draw()


class _AboveTheView(logging.Handler):
    """A log handler that prints its records above the live table."""

    def __init__(self, inner: logging.Handler, view: StartupView) -> None:
        super().__init__(inner.level)
        self.inner, self.view = inner, view

    def emit(self, record: logging.LogRecord) -> None:
        self.view._clear()
        self.inner.handle(record)
        self.view._draw()


def _status(row: ReplicaStart, now: float) -> str:
    if row.phase == "ready":
        return f"ready in {row.seconds or 0:.1f}s"
    if row.phase == "failed":
        return f"failed after {row.seconds or 0:.1f}s (its log is above)"
    return f"{row.phase} {now - row.started:.1f}s"


def _plain(row: ReplicaStart) -> str:
    if row.phase == "ready":
        return f"{row.id}: ready in {row.seconds or 0:.1f}s"
    if row.phase == "failed":
        return f"{row.id}: failed after {row.seconds or 0:.1f}s: {row.error}"
    return f"{row.id}: {row.phase}"


# --- llmgw status -----------------------------------------------------------------


def render_status(doc: dict[str, Any], url: str) -> str:
    """``GET /admin/status`` as text: per model its engine, policies, traffic and
    replicas; then the aliases and the last reload."""
    traffic = doc.get("traffic") or {}
    rates = traffic.get("models", {})
    models = doc.get("models", {})
    out = [f"llmgw at {url}: {len(models)} model(s); traffic over the last "
           f"{traffic.get('window_s', 0):.0f}s"]
    for name, model in models.items():
        out += ["", *_model_lines(name, model, rates.get(name))]
    unknown = rates.get("unknown")
    if unknown and unknown["requests_per_s"]:
        out += ["", f"unknown models: {unknown['requests_per_s']:.2f} req/s"
                    f"{_codes(unknown)}"]
    aliases = doc.get("aliases") or {}
    if aliases:
        out.append("")
        out += [f"alias {alias} -> " + ", ".join(f"{target} {share:.0%}"
                                                 for target, share in weights.items())
                for alias, weights in aliases.items()]
    reload = doc.get("reload")
    if reload:
        ago = doc.get("time", reload["at"]) - reload["at"]
        outcome = "applied" if reload["ok"] else f"refused: {reload['error']}"
        out += ["", f"last reload {ago:.0f}s ago: {outcome}"]
    return "\n".join(out) + "\n"


def _model_lines(name: str, model: dict[str, Any], rates: dict[str, Any] | None) -> list[str]:
    routing = model.get("routing") or {}
    policies = routing.get("policy") or {}
    policy = policies.get("mixed") if list(policies) == ["mixed"] else \
        " ".join(f"{pool}:{p}" for pool, p in policies.items())
    head = f"{name}  engine={model.get('engine')}  routing={policy}"
    if routing.get("shadow"):
        head += f"  shadow={','.join(routing['shadow'])}"
    if not model.get("served", True):
        head += "  (not served yet)"
    lines = [head]
    if model.get("adapters"):
        lines.append(f"  adapters: {', '.join(model['adapters'])}")
    if rates:
        lines.append(f"  traffic: {rates['requests_per_s']:.2f} req/s, "
                     f"4xx {rates['client_errors_per_s']:.2f}/s, "
                     f"5xx {rates['server_errors_per_s']:.2f}/s "
                     f"({rates['server_error_ratio']:.1%}){_codes(rates)}")
    else:
        lines.append("  traffic: none yet")
    if model.get("queued"):
        lines.append(f"  waiting for a replica: {model['queued']}")
    admission = model.get("admission")
    if admission:
        lines.append(f"  admission: {admission['in_flight']} in flight, "
                     f"{admission['queued']} queued")
    table = [("replica", "pool", "state", "health", "in-flight", "running", "queue", "kv",
              "adapters")]
    for pool_name, pool in (model.get("pools") or {}).items():
        for replica in pool.get("replicas", []):
            engine = replica.get("engine") or {}
            table.append((
                replica["id"], pool_name, replica["state"], _health(replica),
                str(replica["in_flight"]), _number(engine.get("running")),
                _number(engine.get("waiting")), _share(engine.get("kv_usage")),
                ",".join(replica.get("adapters") or []) or "-"))
        for start in pool.get("starting", []):
            table.append((start["id"], pool_name, "starting", start.get("phase") or "-",
                          "-", "-", "-", "-", f"{start['for_s']:.0f}s"))
    if len(table) > 1:
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths,
                                                                     strict=True)).rstrip()
                  for row in table]
    for pool_name, pool in (model.get("pools") or {}).items():
        scaler = pool.get("autoscaler")
        if scaler:
            line = (f"  autoscaler ({pool_name}): {scaler['desired']} wanted of "
                    f"{scaler['min_replicas']}..{scaler['max_replicas']}")
            change = scaler.get("last_change")
            if change:
                line += (f"; last {change['direction']} to {change['to']} "
                         f"({change['reason']}) {change['ago_s']:.0f}s ago")
            lines.append(line)
        if pool.get("last_error"):
            first = str(pool["last_error"]).splitlines()[0]
            lines.append(f"  last start error ({pool_name}): {first}")
    return lines


def _codes(rates: dict[str, Any]) -> str:
    codes = rates.get("errors_by_code") or {}
    return ("; errors: " + ", ".join(f"{code} {rate:.2f}/s" for code, rate in codes.items())
            if codes else "")


def _health(replica: dict[str, Any]) -> str:
    outlier = (replica.get("outlier") or {}).get("state", "in")
    if outlier == "ejected":
        return "ejected"
    if outlier == "half_open":
        return "half-open"
    return "up" if replica.get("healthy") else "down"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"
