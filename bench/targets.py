"""The processes a benchmark measures: the instant engine and the proxies in front of it.

Each runs as its own subprocess on a free loopback port, with its output in a log file
under the run's temporary folder. :class:`Target` knows which process to charge CPU to:
the proxy for a proxy, the engine for the direct row. Every wait here is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
MODEL = "fake"


class StartError(Exception):
    """A target did not come up; the message says why, for the results table."""


@dataclass
class Target:
    """A URL to load, and the process whose CPU one request through it costs."""

    name: str
    url: str  # base, no /v1
    process: subprocess.Popen[bytes]
    log: Path

    def cpu_s(self) -> float:
        """User + system CPU seconds of the process and its live children, all threads."""
        proc = psutil.Process(self.process.pid)
        total = 0.0
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = p.cpu_times()
                total += times.user + times.system
        return total

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def own_cpu_s() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy, all CPUs together."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Layout:
    """Which CPU each party runs on; None leaves it to the scheduler. With 2 CPUs the
    client and the engine share the first and the proxy under test has the second, so a
    proxy is never preempted by the load it serves (and a multi-threaded proxy gets one
    core, like the single-threaded Python ones)."""

    client: int | None = None
    engine: int | None = None
    proxy: int | None = None

    @classmethod
    def pinned(cls) -> Layout:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2 or shutil.which("taskset") is None:
            return cls()
        if len(cpus) == 2:
            return cls(cpus[0], cpus[0], cpus[1])
        return cls(cpus[0], cpus[1], cpus[2])

    def describe(self) -> str:
        if self.proxy is None:
            return "not pinned"
        return (f"client on CPU {self.client}, engine on CPU {self.engine}, "
                f"proxy on CPU {self.proxy}")


def _spawn(name: str, argv: list[str], port: int, logs: Path, cpu: int | None) -> Target:
    log = logs / f"{name}.log"
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]  # taskset execs: the pid stays the same
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                   stdin=subprocess.DEVNULL)
    return Target(name, f"http://127.0.0.1:{port}", process, log)


def _log_tail(target: Target, lines: int = 5) -> str:
    try:
        text = target.log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


async def wait_ready(target: Target, path: str, timeout_s: float) -> None:
    """Poll ``path`` until it answers 200; raise StartError on exit or timeout."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            if target.process.poll() is not None:
                raise StartError(f"exited with {target.process.returncode}: {_log_tail(target)}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(target.url + path) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise StartError(f"not ready after {timeout_s:.0f}s: {_log_tail(target)}")


# --- the four kinds -------------------------------------------------------------------


def start_engine(logs: Path, token_delay_ms: float, cpu: int | None) -> Target:
    port = free_port()
    argv = [sys.executable, str(BENCH / "instant_engine.py"), "--port", str(port),
            "--served-model-name", MODEL, "--token-delay-ms", str(token_delay_ms)]
    return _spawn("direct", argv, port, logs, cpu)


def llmgw_config(engine_url: str, port: int) -> str:
    return (f"server: {{host: 127.0.0.1, port: {port}, log_level: warning}}\n"
            f"models:\n  - name: {MODEL}\n    engine: openai\n"
            f"    url: [\"{engine_url}\"]\n    routing: least-load\n")


def start_llmgw(logs: Path, engine_url: str, cpu: int | None, probe: bool = False,
                freeze: bool = False, name: str = "llmgw") -> Target:
    """``llmgw up`` on a temporary config; through bench/gc_probe.py (stats in
    ``logs/<name>-gc.json``) when ``probe`` or ``freeze``."""
    port = free_port()
    config = logs / f"{name}.yaml"
    config.write_text(llmgw_config(engine_url, port))
    entry = ["-m", "llmgw"]
    if probe or freeze:
        entry = [str(BENCH / "gc_probe.py"), *(["--freeze"] if freeze else []),
                 str(logs / f"{name}-gc.json")]
    argv = [sys.executable, *entry, "up", str(config), "--log-level", "warning"]
    return _spawn(name, argv, port, logs, cpu)


def start_baseline(logs: Path, engine_url: str, cpu: int | None) -> Target:
    port = free_port()
    argv = [sys.executable, str(BENCH / "baseline_proxy.py"), "--upstream", engine_url,
            "--port", str(port)]
    return _spawn("baseline", argv, port, logs, cpu)


def start_sglang_router(logs: Path, engine_url: str, cpu: int | None) -> Target:
    """The Rust router from the ``sglang-router`` wheel, round robin over one worker."""
    if importlib.util.find_spec("sglang_router") is None:
        raise StartError("sglang-router is not installed (pip install sglang-router)")
    port = free_port()
    argv = [sys.executable, "-m", "sglang_router.launch_router", "--worker-urls", engine_url,
            "--host", "127.0.0.1", "--port", str(port), "--policy", "round_robin",
            "--log-level", "warn"]
    return _spawn("sglang-router", argv, port, logs, cpu)


READY_PATHS = {"direct": "/health", "llmgw": "/ready", "llmgw-gc-freeze": "/ready",
               "baseline": "/health", "sglang-router": "/health"}
