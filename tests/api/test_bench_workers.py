"""bench/workers.py in its quickest form: one gateway with one worker and one with two,
each worker capped at a share of a CPU when this machine lets the test make cgroups (else
uncapped). Checks that it runs end to end, that both workers of the two-worker gateway
served requests, and that it leaves no gateway process and no cgroup behind; the numbers
themselves are the benchmark's business."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from bench.cpu_caps import find_controller
from tests.support import ROOT

pytestmark = pytest.mark.e2e


def _still_running(pid: int) -> bool:
    """``pid`` is alive and still a gateway (not a number the kernel gave out again)."""
    with contextlib.suppress(psutil.Error):
        return "llmgw" in " ".join(psutil.Process(pid).cmdline())
    return False


@pytest.mark.timeout(200)
def test_quick_run_uses_both_workers_and_leaves_nothing_behind() -> None:
    capped = find_controller() is not None
    run = subprocess.run(
        [
            sys.executable,
            "bench/workers.py",
            "--quick",
            *([] if capped else ["--cpus-per-worker", "0"]),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = run.stdout
    assert run.returncode == 0, (out + run.stderr)[-3000:]

    assert re.search(r"^\| llmgw-1w \| 1 \| \d+ \|.*\| 300 \| [01] of 1 \|$", out, re.M), out
    two = re.search(r"^\| llmgw-2w \| 2 \| \d+ \|.*\| (\d+) / (\d+) \| [01] of 1 \|$", out, re.M)
    assert two, out
    assert int(two[1]) > 0 and int(two[2]) > 0 and int(two[1]) + int(two[2]) == 300, out
    assert re.search(
        r"^ratio  2 workers / 1 worker, req/s: [0-9.]+x \(goal >= 1\.7x: "
        r"(met|NOT met)\)",
        out,
        re.M,
    ), out

    setup = re.findall(r"^  llmgw-\dw: \S+, pids \[([\d, ]+)\](?:, supervisor (\d+))?$", out, re.M)
    pids = [int(pid) for line in setup for pid in re.findall(r"\d+", " ".join(line))]
    assert len(pids) == 4, out  # one gateway process; two workers and their supervisor
    assert [pid for pid in pids if _still_running(pid)] == []
    cgroup = re.search(r"under (\S+)\)", out)
    assert bool(cgroup) == capped, out
    if cgroup:
        assert not Path(cgroup[1]).exists(), f"{cgroup[1]} left behind"
