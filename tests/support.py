"""Helpers for tests that start real processes: the gateway, engines, the fake engine."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import httpx
import yaml

if TYPE_CHECKING:
    from llmgw.build import Gateway
    from llmgw.config import GatewayConfig
    from llmgw.telemetry import Tracing

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``check`` until true. Used only to wait for an outside process to reach a
    state (a server listening, an engine's counter); never to order our own steps."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def http_ok(url: str, verify: ssl.SSLContext | bool = True) -> bool:
    try:
        return httpx.get(url, timeout=1, verify=verify).status_code == 200
    except httpx.HTTPError:
        return False


class Server:
    """A child process serving HTTP on ``url``, stopped (with its group) on ``stop``."""

    def __init__(self, argv: list[str], port: int, ready_path: str, timeout_s: float = 120,
                 env: dict[str, str] | None = None, tls: ssl.SSLContext | None = None) -> None:
        """``tls``: the server speaks HTTPS, verified with this client context."""
        self.port = port
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        self._output: str | None = None
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the server
            prefix="llmgw-test-", suffix=".log", delete=False
        )
        self.proc = subprocess.Popen(
            argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )
        try:
            wait_until(lambda: self._alive() and http_ok(self.url + ready_path, tls or True),
                       timeout_s,
                       f"{argv[:4]} to serve {ready_path}")
        except AssertionError:
            self.stop()
            raise AssertionError(f"server did not start; log:\n{self.output()[-3000:]}") from None

    def _alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited with {self.proc.returncode}:\n"
                                 f"{self.output()[-3000:]}")
        return True

    def output(self) -> str:
        if self._output is not None:  # stopped: the log file is gone
            return self._output
        return Path(self.log.name).read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self._output is None:  # kept in memory; the temp folder is left clean
            self._output = self.output()
            self.log.close()
            Path(self.log.name).unlink(missing_ok=True)
        return self.proc.returncode


def start_fake_engine(*args: str, name: str = "fake") -> Server:
    port = free_port()
    return Server([sys.executable, "-m", "llmgw.engines.fake", "--port", str(port),
                   "--served-model-name", name, *args], port, "/health", timeout_s=30)


def start_gateway(config: dict[str, Any], tmp: Path, timeout_s: float = 180,
                  extra_configs: list[Path] | None = None, ready_path: str = "/ready") -> Server:
    port = free_port()
    config = {**config, "server": {**config.get("server", {}), "port": port,
                                   "host": "127.0.0.1"}}
    path = tmp / f"gateway-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    files = [path, *(extra_configs or [])]
    check_like_llmgw(files)
    argv = [sys.executable, "-m", "llmgw", "up", *map(str, files)]
    return Server(argv, port, ready_path, timeout_s=timeout_s)


def check_like_llmgw(files: list[Path]) -> None:
    """What `llmgw check FILES` runs, in process: a test never starts a config that
    `check` would refuse (and `up` then starts what `check` accepted)."""
    from llmgw.checks import validate
    from llmgw.config import load_config

    validate(load_config(files))


def engine_counter(url: str, name: str) -> float:
    """A sample from an engine's Prometheus text at ``url``/metrics."""
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in {url}/metrics")


def llmgw_up(config: str, timeout_s: float, env: dict[str, str] | None = None) -> Server:
    """`llmgw up CONFIG` exactly as an operator runs it, on a free port."""
    check_like_llmgw([ROOT / config])
    port = free_port()
    return Server([sys.executable, "-m", "llmgw", "up", config, "--port", str(port)], port,
                  "/ready", timeout_s=timeout_s, env=env)


def launched_engine_urls(gateway: Server) -> list[str]:
    """The launched replicas' own URLs, from the launcher's lines in the gateway's log."""
    return [line.rsplit(" ", 1)[1] for line in gateway.output().splitlines()
            if "ready at http://" in line]


def in_process_gateway(config: GatewayConfig, tracing: Tracing | None = None) -> Gateway:
    """A gateway built in this process (for httpx.ASGITransport tests): every model served,
    attached engines wired as members (untouched until a request goes to one). No fleet:
    nothing is launched. Call inside the event loop that serves it; close it after.
    ``tracing``: instead of what the config asks for (an in-memory span exporter)."""
    from llmgw.build import Gateway
    from llmgw.placement.local import attached_addresses

    gateway = Gateway(config, tracing=tracing)
    for model in config.models:
        gateway.serve(gateway.add_model(model))
        for address, role in zip(attached_addresses(model), model.replica_roles, strict=True):
            gateway.wire(model.name, address, role, version="", healthy=True)
    return gateway


T = TypeVar("T")


class ClosedLoop(Generic[T]):
    """Closed-loop load from ``workers`` threads, each with its own client, sending one
    request after another (``request(client, n)``, ``n`` the results so far) until
    ``stop()`` or ``max_requests`` in all. Every result is kept, in completion order."""

    def __init__(self, request: Callable[[httpx.Client, int], T], workers: int,
                 max_requests: int, timeout_s: float) -> None:
        self._request, self.workers, self.max_requests = request, workers, max_requests
        self._timeout_s = timeout_s
        self.results: list[T] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> ClosedLoop[T]:
        self._threads = [threading.Thread(target=self._run, daemon=True)
                         for _ in range(self.workers)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> list[T]:
        self._stop.set()
        for thread in self._threads:
            thread.join(self._timeout_s)
        return self.results

    def __enter__(self) -> ClosedLoop[T]:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def count(self) -> int:
        with self._lock:
            return len(self.results)

    def wait_for(self, more: int, timeout_s: float = 120) -> None:
        """Until ``more`` requests finished beyond those finished now."""
        target = self.count() + more
        wait_until(lambda: self.count() >= target, timeout_s, f"{more} more requests")

    def _run(self) -> None:
        with httpx.Client(timeout=self._timeout_s) as client:
            while not self._stop.is_set():
                with self._lock:
                    n = len(self.results)
                    if n >= self.max_requests:
                        return
                result = self._request(client, n)
                with self._lock:
                    self.results.append(result)
