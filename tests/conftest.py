from __future__ import annotations

import os
from pathlib import Path

import pytest

# Build the demo model once per test run, into a cache the test run owns.
os.environ.setdefault("LLMGW_CACHE_DIR", str(Path.home() / ".cache" / "llmgw"))


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path
