"""bench/request_cpu.py runs the serving stack in process and prints its line (a smoke
test: the number itself is for bench/README.md, not for a timed assertion)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_request_cpu_prints_microseconds_per_request() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "request_cpu.py"), "--requests", "50",
         "--passes", "1", "--routing", "least-load"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert re.search(r"routing least-load: [0-9.]+ us CPU per request", done.stdout), done.stdout
