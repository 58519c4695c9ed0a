"""`llmgw check` and `llmgw up` as processes: the same refusal, naming the YAML path, and
`up` launches no engine for a config `check` refuses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT
from tests.unit.test_check import BAD_CONFIGS, write_case


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmgw", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize(("text", "expected", "files"), [c[1:] for c in BAD_CONFIGS],
                         ids=[c[0] for c in BAD_CONFIGS])
def test_check_and_up_refuse_alike_before_launching(
    tmp_path: Path, text: str, expected: str, files: dict[str, str],
) -> None:
    path = write_case(tmp_path, text, files)
    check, up = run_cli("check", str(path)), run_cli("up", str(path))
    assert (check.returncode, check.stdout) == (2, ""), check.stderr
    assert expected.replace("{tmp}", str(tmp_path)) in check.stderr
    assert up.returncode == 2, up.stderr
    assert up.stderr == check.stderr  # the same validation, nothing else in between
