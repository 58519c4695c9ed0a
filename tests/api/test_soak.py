"""A short run of bench/soak.py: mixed traffic at concurrency 32 with disconnects, bad
input, 429s and an engine killed mid-run must leave no growth in RSS, descriptors or
connections, every in-flight gauge back at 0, and the engine restarted."""

from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT


def test_short_soak_shows_no_growth() -> None:
    result = subprocess.run(
        # At least 8 waves: growth is judged between the first and last third of them, and
        # on a busy machine 12 seconds ran only 4 (one sample a side swings by 10+ fds).
        [sys.executable, "bench/soak.py", "--seconds", "12", "--requests", "300",
         "--min-waves", "8", "--check"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.rstrip().endswith("no growth")
