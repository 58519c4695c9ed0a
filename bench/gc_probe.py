"""Run llmgw's command line with CPython's garbage-collector pauses recorded; used only by
``bench/overhead.py`` (``--profile``, and the ``llmgw-gc-freeze`` target). The gateway code
is untouched: this registers a ``gc.callbacks`` hook, and with ``--freeze`` imports llmgw's
modules and calls ``gc.freeze()`` (a what-if: objects that live for the whole process are
then never scanned again), before calling ``llmgw.cli.main``.

    python bench/gc_probe.py [--freeze] STATS.json up CONFIG.yaml [llmgw flags]

Each SIGUSR1 writes what was gathered since the previous one to STATS.json (atomically)
and starts afresh: ``{"gen0": {"count": n, "total_ms": t, "max_ms": m}, ...}``.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any


class PauseLog:
    """Collections per generation; touched from the main thread only (gc runs there)."""

    def __init__(self) -> None:
        self._started = 0.0
        self.stats: dict[str, dict[str, float]] = {}

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        ms = (time.perf_counter() - self._started) * 1000
        entry = self.stats.setdefault(f"gen{info['generation']}",
                                      {"count": 0, "total_ms": 0.0, "max_ms": 0.0})
        entry["count"] += 1
        entry["total_ms"] += ms
        entry["max_ms"] = max(entry["max_ms"], ms)

    def dump(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.stats))
        os.replace(tmp, path)
        self.stats = {}


def main() -> int:
    args = sys.argv[1:]
    freeze = args[:1] == ["--freeze"]
    if freeze:
        args = args[1:]
    out = Path(args[0])
    log = PauseLog()
    gc.callbacks.append(log.on_gc)

    def on_usr1(signum: int, frame: FrameType | None) -> None:
        log.dump(out)

    signal.signal(signal.SIGUSR1, on_usr1)
    import llmgw.api.app
    import llmgw.build  # noqa: F401  (imported for gc.freeze to cover its modules)
    from llmgw.cli import main as llmgw_main

    if freeze:
        gc.freeze()
    return int(llmgw_main(args[1:]))


if __name__ == "__main__":
    raise SystemExit(main())
