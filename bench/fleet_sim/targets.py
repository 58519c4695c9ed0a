"""The processes the fleet benchmark runs: the simulated fleet and the routers in front.

Each is a subprocess on free loopback ports with its output in a log file; every wait is
bounded and a router that does not come up raises :class:`StartError`, whose message
goes into the results table as the reason for ``n/a``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[2]
MODEL = "sim"


class StartError(Exception):
    """A target could not be started or refused the simulated engines."""


@dataclass
class Proc:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def tail(self, lines: int = 4) -> str:
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


def spawn(name: str, argv: list[str], port: int, logs: Path) -> Proc:
    log = logs / f"{name.replace('/', '-')}.log"
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


def start_sims(logs: Path, ports: list[int], cost_flags: list[str]) -> Proc:
    argv = [sys.executable, "-m", "bench.fleet_sim.sim_engine", "--model", MODEL,
            "--ports", ",".join(map(str, ports)), *cost_flags]
    return spawn("sims", argv, ports[0], logs)


def llmgw_config(policy: str, urls: list[str]) -> dict[str, object]:
    return {"models": [{"name": MODEL, "engine": "vllm", "url": urls, "routing": policy}],
            "health": {"interval_s": 1, "stats_interval_s": 0.5},
            "server": {"log_level": "warning"}}


def check_llmgw(config: Path) -> None:
    """``llmgw check``; StartError with its message when it rejects the config (e.g. a
    routing policy this checkout does not have)."""
    done = subprocess.run([sys.executable, "-m", "llmgw", "check", str(config)], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        lines = [ln.strip() for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
        raise StartError("llmgw check: " + " ".join(lines[-2:])[:300])


def start_llmgw(logs: Path, policy: str, urls: list[str]) -> Proc:
    port = free_ports(1)[0]
    config = logs / f"llmgw-{policy}.yaml"
    config.write_text(json.dumps(llmgw_config(policy, urls)))  # JSON is YAML
    check_llmgw(config)
    argv = [sys.executable, "-m", "llmgw", "up", str(config), "--port", str(port)]
    return spawn(f"llmgw-{policy}", argv, port, logs)


def start_sglang_router(logs: Path, policy: str, urls: list[str]) -> Proc:
    """The Rust router from the ``sglang-router`` wheel; cache_aware with its defaults
    (cache threshold 0.3, balance thresholds abs 64 / rel 1.5)."""
    if importlib.util.find_spec("sglang_router") is None:
        raise StartError("sglang-router is not installed (pip install sglang-router)")
    port, metrics_port = free_ports(2)
    argv = [sys.executable, "-m", "sglang_router.launch_router", "--worker-urls", *urls,
            "--policy", policy, "--host", "127.0.0.1", "--port", str(port),
            "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics_port),
            "--log-level", "warn"]
    return spawn(f"sglang-router-{policy}", argv, port, logs)
