"""The top process of `llmgw up` with ``server.workers`` above 1.

Why a supervisor rather than one worker owning the fleet: a locally launched engine dies
with the process that launched it (``placement/die_with_parent.py``), so engines owned
by a worker would die with that worker, and every request of the others with them. The
supervisor serves nothing, so it has little reason to die; it launches the engines,
runs the fleet (health, autoscaling, rollouts, reloads) as a single gateway does, and
publishes the replicas through a ``Directory`` that the workers follow
(``fleet.sharing``), the seam several gateways on Ray already share. A worker that dies
is started again, and no engine notices.

Stopping (SIGTERM, SIGINT): every worker drains (``server.drain_timeout_s``), then the
engines stop, once. SIGHUP reloads the supervisor's fleet and every worker's config.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from llmgw.config import ConfigError, GatewayConfig
from llmgw.workers.hub import (
    SUPERVISOR_SOCKET,
    Change,
    SupervisorDirectory,
    serve_unix,
    supervisor_app,
    tell_workers,
)
from llmgw.workers.serving import cannot_listen, pick_port, validate_reload

log = logging.getLogger("llmgw.workers")
# A worker that ran this long before it died is restarted at once; one that dies sooner
# waits, doubling up to _MAX_BACKOFF_S (a worker that cannot start must not spin).
_HEALTHY_RUN_S = 30.0
_MAX_BACKOFF_S = 10.0
# Beyond the drain timeout, how long a worker may take to exit before it is killed.
_EXIT_GRACE_S = 15.0


@dataclass(slots=True)
class WorkerSlot:
    index: int
    process: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


class Workers:
    """N worker processes, each restarted when it dies until ``stop``."""

    def __init__(
        self, count: int, argv: Callable[[int], list[str]], on_exit: Callable[[int], None]
    ) -> None:
        self.slots = [WorkerSlot(index) for index in range(count)]
        self._argv, self._on_exit = argv, on_exit
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._keep(slot), name=f"worker-{slot.index}")
            for slot in self.slots
        ]

    async def _keep(self, slot: WorkerSlot) -> None:
        backoff = 0.5
        while not self.stopping.is_set():
            started = time.monotonic()
            # Its own session: the terminal's Ctrl-C reaches the supervisor only, which
            # stops the workers in order rather than watching them die and restarting them.
            slot.process = process = await asyncio.create_subprocess_exec(
                *self._argv(slot.index), start_new_session=True
            )
            if self.stopping.is_set():  # stop() ran while it started
                process.terminate()
            code = await process.wait()
            self._on_exit(process.pid)
            if self.stopping.is_set():
                return
            backoff = (
                0.5
                if time.monotonic() - started > _HEALTHY_RUN_S
                else min(backoff * 2, _MAX_BACKOFF_S)
            )
            log.error(
                "worker %d (pid %d) exited with %s; starting it again in %.1fs",
                slot.index,
                process.pid,
                code,
                backoff,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), backoff)

    async def stop(self, drain_s: float) -> None:
        """SIGTERM to every worker (each drains as a single gateway does), then wait;
        whatever is left after the drain and a grace is killed."""
        self.stopping.set()
        for slot in self.slots:
            if slot.running:
                assert slot.process is not None
                slot.process.terminate()
        if not self._tasks:
            return
        _, late = await asyncio.wait(self._tasks, timeout=drain_s + _EXIT_GRACE_S)
        for slot in self.slots:
            if late and slot.running:
                assert slot.process is not None
                log.error("worker %d did not exit in time: killed", slot.index)
                slot.process.kill()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def supervise(
    cfg: GatewayConfig,
    paths: Sequence[str],
    overrides: Callable[[GatewayConfig], GatewayConfig],
    log_level: str | None,
) -> int:
    """`llmgw up` with several workers; the exit status."""
    from llmgw.metrics import multiprocess

    host = cfg.server.host
    unusable = cannot_listen(host, cfg.server.port)
    if unusable is not None:
        log.error("cannot listen on %s:%d: %s", host, cfg.server.port, unusable)
        return 1
    port = cfg.server.port or pick_port(host)

    def resolved(new: GatewayConfig) -> GatewayConfig:  # reloads keep the port chosen here
        new = overrides(new)
        return new.model_copy(update={"server": new.server.model_copy(update={"port": port})})

    run_dir = Path(tempfile.mkdtemp(prefix="llmgw-workers-"))
    try:
        (run_dir / "metrics").mkdir()
        multiprocess.enable(str(run_dir / "metrics"))
        return await _Supervisor(resolved(cfg), paths, resolved, log_level, run_dir).run()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


class _Supervisor:
    def __init__(
        self,
        cfg: GatewayConfig,
        paths: Sequence[str],
        overrides: Callable[[GatewayConfig], GatewayConfig],
        log_level: str | None,
        run_dir: Path,
    ) -> None:
        from llmgw.build import Gateway
        from llmgw.fleet.controller import Fleet
        from llmgw.fleet.reload import Reloader
        from llmgw.metrics import multiprocess
        from llmgw.placement.local import LocalLauncher

        self.cfg, self.paths, self.log_level, self.run_dir = cfg, paths, log_level, run_dir
        self.directory = SupervisorDirectory()
        self.gateway = Gateway(cfg, rng=random.Random())
        self.fleet = Fleet(self.gateway, LocalLauncher(), directory=self.directory)
        self.reloader = Reloader(
            self.fleet, paths, lambda new: validate_reload(cfg, new), overrides
        )
        metrics_dir = str(run_dir / "metrics")
        self.workers = Workers(
            cfg.server.worker_count,
            self._worker_argv,
            lambda pid: multiprocess.process_gone(metrics_dir, pid),
        )

    def _worker_argv(self, index: int) -> list[str]:
        server = self.cfg.server
        level = ["--log-level", self.log_level] if self.log_level else []
        # The worker dies with the supervisor, whatever kills it, as engines do.
        return [
            sys.executable,
            "-m",
            "llmgw.placement.die_with_parent",
            "--",
            sys.executable,
            "-m",
            "llmgw.workers.worker",
            "--run-dir",
            str(self.run_dir),
            "--index",
            str(index),
            "--host",
            server.host,
            "--port",
            str(server.port),
            *level,
            *self.paths,
        ]

    async def run(self) -> int:
        from llmgw.console import StartupView, is_terminal
        from llmgw.placement.base import LaunchError

        loop = asyncio.get_running_loop()
        main_task = asyncio.current_task()
        assert main_task is not None
        serving = False

        def on_stop() -> None:  # while engines start, abort; once serving, drain
            if serving:
                self.workers.stopping.set()
            else:
                main_task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_stop)
        view = StartupView(sys.stderr, live=is_terminal(sys.stderr))
        view.attach(self.fleet.progress)
        hub = None
        try:
            try:
                await self.fleet.start(wait=True)
            finally:
                view.finish()
            await self.gateway.start()  # health and engine stats, for the fleet's decisions
            hub = await serve_unix(
                supervisor_app(self.directory, self.changed), self.run_dir / SUPERVISOR_SOCKET
            )
            loop.add_signal_handler(signal.SIGHUP, lambda: self.fleet.spawn(self._reload_all()))
            serving = True
            self.workers.start()
            log.info(
                "serving on %s:%d with %d workers",
                self.cfg.server.host,
                self.cfg.server.port,
                len(self.workers.slots),
            )
            await self.workers.stopping.wait()
            log.info("stopping: draining %d workers", len(self.workers.slots))
            return 0
        except LaunchError as exc:
            log.error("not serving: %s", exc)
            return 1
        except asyncio.CancelledError:
            log.info("interrupted while starting engines")
            return 130
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
            await asyncio.shield(self.workers.stop(self.cfg.server.drain_timeout_s))
            if hub is not None:
                await hub.cleanup()
            log.info("stopping %d engine process(es)", len(self.gateway.pool.all()))
            await asyncio.shield(self.fleet.close())
            await asyncio.shield(self.gateway.close())

    async def changed(self, what: Change, origin: int | None) -> list[str]:
        """Worker ``origin`` (None: this process, SIGHUP) made a change: a reload is
        applied here first (the fleet launches what the new config adds), then every
        other running worker applies it. Returns what failed."""
        failed = []
        if what == "reload":
            try:
                await self.reloader.reload()
            except ConfigError as exc:
                failed.append(f"the supervisor: {exc}")
        others = [s.index for s in self.workers.slots if s.index != origin and s.running]
        failed += await tell_workers(self.run_dir, others, what)
        return failed

    async def _reload_all(self) -> None:
        for problem in await self.changed("reload", None):
            log.error("reload: %s", problem)
