"""The access log: one JSON object per line per request, written by a thread of its own.

The request path only serializes its record and puts the line on a queue; a writer
thread takes lines off and writes them, so a slow disk never stalls the event loop.
What goes in is the caller's choice of fields (``llmgw.api.access``): ids, names,
numbers, never a body, a prompt or a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sys
import threading
from collections.abc import Mapping
from typing import TextIO

import orjson

_STOP = None


class AccessLog:
    """Lines go to ``path`` (appended to, created if missing) or, with None, to standard
    error. ``write`` is safe from the event loop; ``close`` writes what is queued."""

    def __init__(self, path: str | None) -> None:
        # Opened here, at start, so a file that cannot be written fails `up` at once.
        self._out: TextIO = sys.stderr if path is None else \
            open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._owns_out = path is not None
        self._lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="llmgw-access-log", daemon=True)
        self._thread.start()

    def write(self, record: Mapping[str, object]) -> None:
        self._lines.put(orjson.dumps(record).decode())

    def _run(self) -> None:
        while True:
            line = self._lines.get()
            batch = []
            while line is not _STOP:
                batch.append(line)
                try:  # take what else is queued: one write and flush for all of it
                    line = self._lines.get_nowait()
                except queue.Empty:
                    break
            if batch:
                with contextlib.suppress(OSError, ValueError):  # disk full, closed stderr
                    self._out.write("\n".join(batch) + "\n")
                    self._out.flush()
            if line is _STOP:
                return

    async def close(self) -> None:
        self._lines.put(_STOP)
        await asyncio.to_thread(self._thread.join)
        if self._owns_out:
            self._out.close()
