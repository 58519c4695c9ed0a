"""bench/tools.py in its quickest form: the gateway with its tool workers, a few calls of
each kind. Checks that the benchmark runs end to end and reports every measurement; the
numbers themselves are the benchmark's business."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(150)
def test_quick_run_reports_overhead_and_batching() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.tools", "--calls", "20", "--seconds", "1",
         "--concurrency", "8"], cwd=ROOT, capture_output=True, text=True, timeout=140)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    result = json.loads(run.stdout)
    assert sorted(result) == ["in_process_us", "vec", "vec_off", "weather", "weather_local"]
    assert all(result[k]["p50_ms"] > 0 for k in ("weather", "weather_local", "vec", "vec_off"))
    assert result["vec"]["calls_per_s"] > 0 and result["vec_off"]["calls_per_s"] > 0
