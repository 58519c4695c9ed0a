"""Starting, watching and stopping the processes a benchmark measures, shared by
``bench/overhead.py`` (through ``bench/targets.py``) and ``bench/fleet_sim``.

Each process runs on a free loopback port with its output in a log file; every wait is
bounded, and a process that does not come up raises :class:`StartError`, whose message
(with the tail of the log) goes into the results table as the reason for ``n/a``.

It imports nothing from ``bench``, so that it loads both as ``processes`` (the scripts
run from ``bench/``) and as ``bench.processes`` (``python -m bench.fleet_sim.run``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil

REPO = Path(__file__).resolve().parent.parent


class StartError(Exception):
    """A process did not come up or refused what it was given; the message says why."""


def cpu_s(process: psutil.Process | None) -> float:
    """User + system CPU seconds of a process and its live children, all threads; 0 for
    no process (routing done in the benchmark's own process, or nowhere)."""
    if process is None:
        return 0.0
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = p.cpu_times()
            total += times.user + times.system
    return total


def own_cpu_s() -> float:
    """CPU seconds of this process (the client, and anything it hosts in process)."""
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy, all CPUs together."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0)
                 + getattr(t, "softirq", 0.0))


@dataclass
class Proc:
    """A started process: its base URL (no /v1), and its log. Owned by whoever started
    it, who must :meth:`stop` it."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def cpu_s(self) -> float:
        """CPU seconds so far of the process and its live children."""
        return cpu_s(psutil.Process(self.process.pid))

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; waits for the exit either way."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def tail(self, lines: int = 5) -> str:
        """The last lines of the log, on one line, for an error message."""
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip()[:300] for line in text[-lines:])


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (held open together so none repeats)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


def spawn(name: str, argv: list[str], port: int, logs: Path, cpu: int | None = None) -> Proc:
    """Start ``argv`` in the repository root, serving on ``port``; output to
    ``logs/<name>.log``. Pinned to ``cpu`` with taskset when given."""
    log = logs / f"{name.replace('/', '-')}.log"
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]  # taskset execs: the pid stays the same
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                   stdin=subprocess.DEVNULL)
    return Proc(name, f"http://127.0.0.1:{port}", process, log)


async def wait_ready(proc: Proc, path: str, timeout_s: float) -> None:
    """Poll ``path`` until it answers 200; StartError on exit or timeout."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() < deadline:
            if proc.process.poll() is not None:
                raise StartError(f"exited with {proc.process.returncode}: {proc.tail()}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(proc.url + path) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise StartError(f"not ready after {timeout_s:.0f}s: {proc.tail()}")
