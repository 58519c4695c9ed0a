from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# Build the demo model once per test run, into a cache the test run owns.
os.environ.setdefault("LLMGW_CACHE_DIR", str(Path.home() / ".cache" / "llmgw"))

_SESSION_TMP = pytest.StashKey[Path]()
_FAILED = pytest.StashKey[bool]()


def pytest_configure(config: pytest.Config) -> None:
    """One temporary folder for the whole run, for this process and every process it
    starts (TMPDIR): server logs, launchers' log folders, what engines leave behind when
    a test kills them (vLLM's IPC sockets, compile caches). Removed when the run passes,
    so the machine's temp directory is left as it was; kept, and named, when it fails."""
    base = Path(tempfile.mkdtemp(prefix="llmgw-tests-"))
    os.environ["TMPDIR"] = str(base)
    tempfile.tempdir = str(base)  # gettempdir() may have cached the old one already
    config.stash[_SESSION_TMP] = base


def pytest_unconfigure(config: pytest.Config) -> None:
    base = config.stash.get(_SESSION_TMP, None)
    if base is None:
        return
    if config.stash.get(_FAILED, False):
        print(f"\ntest run failed: its temporary files are kept in {base}", file=sys.stderr)
    else:
        shutil.rmtree(base, ignore_errors=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_FAILED] = exitstatus not in (0, pytest.ExitCode.NO_TESTS_COLLECTED)


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path
