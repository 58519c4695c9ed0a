"""bench/lora in its quickest form: two real embedded engines, one gateway per policy,
24 requests each. Checks that the benchmark runs end to end, every request succeeds and
both policies are reported; the numbers themselves are the benchmark's business."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(120)
def test_quick_run_reports_both_policies_without_errors() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.lora", "--requests", "24", "--rounds", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=110)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    rows = {m["policy"]: (int(m["requests"]), int(m["errors"]))
            for m in re.finditer(r"^\| (?P<policy>[a-z-]+) \| (?P<requests>\d+) \| "
                                 r"(?P<errors>\d+) \|", out, re.MULTILINE)}
    assert rows == {"least-load": (24, 0), "random": (24, 0)}, out[-3000:]
    assert "goal  loads random/least-load:" in out
