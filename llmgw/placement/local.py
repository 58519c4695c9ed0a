"""The local launcher: engines as child processes of the gateway, supervised.

Each replica runs in its own process group (so its own children, e.g. vLLM's engine
core, are stopped with it) and is killed by the kernel if the gateway dies
(PR_SET_PDEATHSIG), so no engine outlives the gateway. A replica that exits is
restarted on the same port with bounded backoff; the pool's health loop takes it out of
rotation meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from llmgw.config import ModelConfig
from llmgw.placement.base import LaunchError, RunningReplica
from llmgw.placement.spec import Endpoint, ProcessSpec, engine_spec
from llmgw.types import ReplicaAddress, Role

log = logging.getLogger("llmgw.launcher")
# Every engine runs under this guard: the kernel kills it if the gateway dies.
_GUARD = [sys.executable, "-m", "llmgw.placement.die_with_parent", "--"]
_LOG_TAIL_BYTES = 4000
# Log file names keep letters, digits, "." "_" "-"; a model name may hold anything else.
_UNSAFE_IN_FILE_NAMES = re.compile(r"[^A-Za-z0-9._-]")
_MAX_STEM = 200


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EngineProcess:
    """One replica's engine process (or tool worker), restarted when it exits
    unexpectedly."""

    def __init__(self, model: str, replica_id: str, argv: list[str], env: dict[str, str],
                 url: str, log_path: Path, startup_timeout_s: float,
                 on_restart: Callable[[str, str], None], health_path: str = "/health") -> None:
        self.model, self.replica_id, self.argv, self.env = model, replica_id, argv, env
        self.url, self.log_path, self.health_path = url, log_path, health_path
        self.startup_timeout_s = startup_timeout_s
        self._on_restart = on_restart
        self._process: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self, spawned: Callable[[], None] = lambda: None) -> None:
        """Spawn the engine (then ``spawned()``: it loads its model) and wait until it
        answers its health route."""
        self._process = await self._spawn()
        spawned()
        await self._wait_ready()
        self._supervisor = asyncio.create_task(
            self._supervise(), name=f"supervise-{self.replica_id}"
        )

    async def _spawn(self) -> asyncio.subprocess.Process:
        log.info("starting %s: %s", self.replica_id, " ".join(self.argv))
        try:
            with open(self.log_path, "ab") as out:
                return await asyncio.create_subprocess_exec(
                    *_GUARD, *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
                    env=self.env, start_new_session=True,
                )
        except OSError as exc:  # validation checks the Python; this is the machine changing
            raise LaunchError(f"engine {self.replica_id} cannot start: {exc}") from None

    async def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self._process.returncode is not None:
                    raise LaunchError(self._failure(f"exited with code {self._process.returncode}"))
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(self.url + self.health_path,
                                           timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        if resp.status == 200:
                            log.info("%s ready at %s", self.replica_id, self.url)
                            return
                # Polling an engine that is still loading weights; nothing to wait on instead.
                await asyncio.sleep(0.25)
        await self._terminate()
        raise LaunchError(self._failure(f"not ready after {self.startup_timeout_s:.0f}s"))

    def _failure(self, what: str) -> str:
        return f"engine {self.replica_id} {what}; last lines of {self.log_path}:\n{self.log_tail()}"

    def log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - _LOG_TAIL_BYTES))
                return f.read().decode(errors="replace")
        except OSError:
            return "<no log>"

    async def _supervise(self) -> None:
        backoff = 1.0
        while not self._stopping:
            assert self._process is not None
            code = await self._process.wait()
            if self._stopping:
                return
            log.error("%s exited with code %s; restarting in %.0fs\n%s",
                      self.replica_id, code, backoff, self.log_tail()[-1000:])
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            try:
                self._process = await self._spawn()
                await self._wait_ready()
                self._on_restart(self.model, self.replica_id)
                backoff = 1.0
            except LaunchError as exc:
                log.error("restart of %s failed: %s", self.replica_id, exc)

    async def stop(self, grace_s: float = 10.0) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self._terminate(grace_s)

    async def _terminate(self, grace_s: float = 10.0) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        self._signal_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace_s)
        except TimeoutError:
            self._signal_group(process.pid, signal.SIGKILL)
            await process.wait()

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None


def log_file_name(replica_id: str, taken: set[str]) -> str:
    """A file name for the replica's log. The replica id keeps the model's name as is
    (metrics, headers, logs say ``Qwen/Qwen2.5-0.5B-Instruct-0``); its log file is
    ``Qwen_Qwen2.5-0.5B-Instruct-0.log``, numbered on when two ids map to one name."""
    stem = _UNSAFE_IN_FILE_NAMES.sub("_", replica_id)[:_MAX_STEM].lstrip(".") or "replica"
    name, n = f"{stem}.log", 1
    while name in taken:
        n += 1
        name = f"{stem}.{n}.log"
    taken.add(name)
    return name


def attached_addresses(model: ModelConfig) -> list[ReplicaAddress]:
    """Attached engines' addresses, in ``model.replica_roles`` order (a disaggregated
    model's prefill replicas first, each with its SGLang bootstrap port)."""
    pd = model.disaggregation
    if pd is not None:
        sglang = model.pd_protocol == "sglang"
        return [ReplicaAddress(f"{model.name}-{role}-{i}", url,
                               bootstrap_port=pool.bootstrap_port_of(i)
                               if sglang and role == "prefill" else None)
                for role, pool in pd.pools for i, url in enumerate(pool.url or [])]
    events: list[str | None] = [*model.kv_events_url] if model.kv_events_url \
        else [None] * model.replica_count
    return [ReplicaAddress(f"{model.name}-{i}", url, kv_events)
            for i, (url, kv_events) in enumerate(zip(model.url or [], events, strict=True))]


class LocalLauncher:
    """Engines as child processes of the gateway, one per replica, launched when the
    fleet asks (``launch``) and stopped when it drained them (``stop``)."""

    def __init__(self, log_dir: Path | None = None) -> None:
        # Engine logs: a temporary folder unless given, removed when every engine stopped
        # cleanly (a failed start already quoted the log's tail in its error).
        self._own_log_dir = log_dir is None
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="llmgw-logs-"))
        self.processes: dict[str, EngineProcess] = {}
        self._log_names: set[str] = set()
        # (model, replica id) -> None; set by whoever counts restarts.
        self.on_restart: Callable[[str, str], None] = lambda model, replica_id: None
        # A local engine restarts on its own ports: it is never lost.
        self.on_lost: Callable[[str, str, str], None] = lambda model, replica_id, why: None
        self.on_phase: Callable[[str, str], None] = lambda replica_id, phase: None
        # Starting replicas: "starting" (the model resolved, the process spawned), then
        # "loading" (the engine runs and loads its model until its health route answers).
        self.phases: dict[str, str] = {}

    async def launch(self, replica_id: str, unit: ModelConfig, *, role: Role = "mixed",
                     version: str = "") -> ReplicaAddress:
        return await self.launch_process(replica_id, engine_spec(unit), role=role,
                                         version=version)

    async def launch_process(self, replica_id: str, spec: ProcessSpec, *,
                             role: Role = "mixed", version: str = "") -> ReplicaAddress:
        self._phase(replica_id, "starting")
        try:
            return await self._launch(replica_id, spec)
        finally:
            self.phases.pop(replica_id, None)

    def local_address(self) -> str:
        return "127.0.0.1"  # every process it starts is a child on this machine

    def _phase(self, replica_id: str, phase: str) -> None:
        self.phases[replica_id] = phase
        self.on_phase(replica_id, phase)

    async def _launch(self, replica_id: str, spec: ProcessSpec) -> ReplicaAddress:
        host, port = "127.0.0.1", free_port()
        url = f"http://{host}:{port}"
        # A restarted engine binds the same ports again, so subscribers reconnect.
        events_port = free_port() if spec.kv_events else None
        # Building the demo model for an engine that cannot build it itself is disk work.
        argv = await asyncio.to_thread(spec.command.argv, Endpoint(host, port, events_port))
        process = self.processes[replica_id] = EngineProcess(
            spec.name, replica_id, argv, spec.command.env(), url,
            self.log_dir / log_file_name(replica_id, self._log_names), spec.startup_timeout_s,
            lambda m, r: self.on_restart(m, r), spec.health_path,
        )
        try:
            await process.start(spawned=lambda: self._phase(replica_id, "loading"))
        except BaseException:
            self.processes.pop(replica_id, None)
            await asyncio.shield(process.stop())
            raise
        return ReplicaAddress(
            replica_id, url,
            f"tcp://{host}:{events_port}" if events_port is not None else None,
            spec.bootstrap_port)

    async def stop(self, replica_id: str) -> None:
        process = self.processes.pop(replica_id, None)
        if process is not None:
            await process.stop()

    def phase(self, replica_id: str) -> str | None:
        return self.phases.get(replica_id)

    async def adoptable(self) -> list[RunningReplica]:
        return []  # engines are the gateway's children: none survive it

    async def close(self) -> None:
        processes = list(self.processes.values())
        self.processes.clear()
        results = await asyncio.gather(*(p.stop() for p in processes), return_exceptions=True)
        if self._own_log_dir and not any(isinstance(r, BaseException) for r in results):
            await asyncio.to_thread(shutil.rmtree, self.log_dir, True)
