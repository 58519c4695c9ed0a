"""The dashboards' JSON files, as committed in ``dashboards/grafana/``."""

from __future__ import annotations

import json
from pathlib import Path

from llmgw.dashboards.builder import Dashboard
from llmgw.dashboards.catalog import DASHBOARDS


def render(dashboard: Dashboard) -> str:
    return json.dumps(dashboard.to_json(), indent=2) + "\n"


def rendered() -> dict[str, str]:
    """File name -> contents, for every dashboard."""
    return {d.file_name: render(d) for d in DASHBOARDS}


def stale(directory: Path) -> list[str]:
    """The files of ``directory`` that differ from the definitions, are missing, or are
    left over from a dashboard no longer defined."""
    want = rendered()
    have = {p.name for p in directory.glob("*.json")}
    return sorted({name for name, text in want.items()
                   if not (directory / name).exists()
                   or (directory / name).read_text() != text} | (have - set(want)))


def write(directory: Path) -> list[str]:
    """Write every dashboard, remove files of dashboards no longer defined; the names of
    the files changed."""
    changed = stale(directory)
    directory.mkdir(parents=True, exist_ok=True)
    want = rendered()
    for name in changed:
        if name in want:
            (directory / name).write_text(want[name])
        else:
            (directory / name).unlink()
    return changed
