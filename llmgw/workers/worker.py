"""One serving worker of ``server.workers: N``, started (and restarted) by the supervisor,
never by hand:

    python -m llmgw.workers.worker --run-dir D --index K --host H --port P CONFIG...

It is the gateway `llmgw up` runs with one worker, less the launching: its fleet follows
the supervisor's (``fleet.sharing``) through the run directory's ``supervisor.sock``, so
launched replicas come and go as the supervisor publishes them; attached engines, keys,
adapters, routing state and metrics series are its own, built from the same config. It
listens on the shared port with SO_REUSEPORT, and on ``worker-K.sock`` for admin changes
another worker made (``hub.worker_app``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from llmgw.config import ConfigError, GatewayConfig, ModelConfig, load_config
from llmgw.metrics import multiprocess
from llmgw.types import ReplicaAddress, Role
from llmgw.workers.hub import (
    SUPERVISOR_SOCKET,
    Change,
    WorkerDirectory,
    post,
    serve_unix,
    worker_app,
    worker_socket,
)
from llmgw.workers.serving import (
    config_overrides,
    freeze_startup_objects,
    loop_factory,
    shared_port_sockets,
    uvicorn_config,
    validate_reload,
)

if TYPE_CHECKING:
    from llmgw.build import Gateway
    from llmgw.fleet.controller import Fleet
    from llmgw.fleet.reload import Reloader
    from llmgw.placement.base import RunningReplica

log = logging.getLogger("llmgw.workers")


class NoLauncher:
    """A worker's launcher: it never launches (the supervisor does), so a follower that
    somehow tried would fail loudly rather than start engines of its own."""

    def __init__(self) -> None:
        self.on_restart: Callable[[str, str], None] = lambda model, replica: None
        self.on_lost: Callable[[str, str, str], None] = lambda model, replica, why: None
        self.on_phase: Callable[[str, str], None] = lambda replica, phase: None

    async def launch(
        self, replica_id: str, unit: ModelConfig, *, role: Role, version: str
    ) -> ReplicaAddress:
        from llmgw.placement.base import LaunchError

        raise LaunchError("a worker does not launch engines; its supervisor does")

    async def stop(self, replica_id: str) -> None:
        return None

    async def adoptable(self) -> list[RunningReplica]:
        return []

    async def close(self) -> None:
        return None

    def phase(self, replica_id: str) -> str | None:
        return None


class HubPeers:
    """``app.state.peers`` of a worker: tells the supervisor, which tells the others."""

    def __init__(self, run_dir: Path, index: int) -> None:
        self._path, self._index = run_dir / SUPERVISOR_SOCKET, index

    async def changed(self, what: Change) -> list[str]:
        try:
            status, answer = await post(
                self._path, "/changed", {"what": what, "origin": self._index}
            )
        except Exception as exc:  # the change is made here; say where it did not reach
            return [f"the other workers (supervisor unreachable: {exc!r})"]
        return list(answer.get("failed", [])) if status == 200 else [str(answer)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmgw.workers.worker")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--index", required=True, type=int)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--log-level", default=None)
    parser.add_argument("configs", nargs="+")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=(args.log_level or "info").upper(),
        format=f"%(asctime)s %(levelname)s %(name)s[worker {args.index}]: %(message)s",
    )
    # Reloads reach workers from the supervisor (hub); a hangup of the terminal is its.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    overrides = config_overrides(args.host, args.port)
    try:
        cfg = overrides(load_config(args.configs))
    except ConfigError as exc:  # the files changed since the supervisor checked them
        print(f"llmgw worker {args.index}: invalid config:\n{exc}", file=sys.stderr)
        return 2
    if args.log_level is None:
        logging.getLogger().setLevel(cfg.server.log_level.upper())
    if (metrics_dir := multiprocess.shared_dir()) is not None:  # before any metric is made
        multiprocess.enable(metrics_dir)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(
            serve(cfg, args.configs, overrides, args.log_level, args.run_dir, args.index)
        )


async def serve(
    cfg: GatewayConfig,
    paths: Sequence[str],
    overrides: Callable[[GatewayConfig], GatewayConfig],
    log_level: str | None,
    run_dir: Path,
    index: int,
) -> int:
    import uvicorn

    from llmgw.api.app import create_app
    from llmgw.api.wire.protocol import serving_protocol
    from llmgw.api.worker_header import WORKER_HEADER, WorkerHeader
    from llmgw.build import Gateway
    from llmgw.fleet import sharing
    from llmgw.fleet.controller import Fleet
    from llmgw.fleet.reload import Reloader
    from llmgw.tools.registry import check_tools
    from llmgw.tools.toolset import ToolSet

    gateway = Gateway(cfg, rng=random.Random())  # seeded apart from the other workers
    directory = WorkerDirectory(run_dir)
    fleet = Fleet(gateway, NoLauncher(), directory=directory)
    reloader = Reloader(fleet, paths, lambda new: validate_reload(cfg, new), overrides,
                        counted=False)  # the supervisor counts the gateway's reloads
    tool_set = ToolSet(cfg, check_tools(cfg), gateway.metrics)  # in-process tools only
    control = None
    try:
        await fleet.start(wait=False)
        # Serve with the fleet as it is now, not after the follower's first round.
        sharing.mirror(fleet, (await directory.watch(-1, 0))[1])
        await tool_set.start()
        app = create_app(gateway, fleet, reloader, tool_set)
        app.state.peers = HubPeers(run_dir, index)

        async def apply(what: Change) -> str | None:
            return await apply_change(what, gateway, fleet, reloader)

        control = await serve_unix(worker_app(apply), worker_socket(run_dir, index))
        # A change written before this worker listened on its socket was not sent to it.
        await apply("keys")
        await apply("adapters")
        try:
            sockets = shared_port_sockets(cfg.server.host, cfg.server.port)
        except OSError as exc:  # something not llmgw took the port since the check
            log.error("cannot listen on %s:%d: %s", cfg.server.host, cfg.server.port, exc)
            return 1
        stamp = [(WORKER_HEADER, str(index).encode())]
        server = uvicorn.Server(uvicorn_config(WorkerHeader(app, index), cfg, log_level,
                                               serving_protocol(app, stamp)))
        freeze_startup_objects()
        await server.serve(sockets=sockets)
        return 0 if server.started else 1
    finally:
        if control is not None:
            await control.cleanup()
        await asyncio.shield(tool_set.close())
        await asyncio.shield(fleet.close())
        await asyncio.shield(directory.release())
        await asyncio.shield(gateway.close())


async def apply_change(
    what: Change, gateway: Gateway, fleet: Fleet, reloader: Reloader
) -> str | None:
    """One admin change another worker made, applied here; why not (None: applied)."""
    if what == "keys":
        gateway.tenancy.reload_state(gateway.config)
    elif what == "adapters":
        for adapter in gateway.catalog.reload_state():  # off the replicas as requests end
            group = gateway.dispatcher.groups.get(adapter.base)
            if group is not None and group.lora is not None:
                fleet.spawn(group.lora.remove(adapter))
    else:
        try:
            await reloader.reload()
        except ConfigError as exc:
            return str(exc)
    return None


if __name__ == "__main__":
    raise SystemExit(main())
