"""``llmgw up | check | status | down | demo | key``: the operator's entry points."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import signal
import sys
import uuid
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING

from llmgw.config import ConfigError, GatewayConfig, load_config
from llmgw.workers.serving import (
    config_overrides,
    freeze_startup_objects,
    loop_factory,
    release,
    reserve_port,
    uvicorn_config,
    validate_reload,
)

if TYPE_CHECKING:
    from llmgw.fleet.reload import Reloader
    from llmgw.placement.base import Directory, Launcher, ProcessLauncher

log = logging.getLogger("llmgw")
# As llmgw.api.admin.ADMIN_KEY_ENV (not imported: `status` starts without the web stack).
_ADMIN_KEY_ENV = "LLMGW_ADMIN_KEY"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=(getattr(args, "log_level", None) or "info").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "check":
            return _check(args.configs)
        if args.command == "down":
            return asyncio.run(_down(_load(args.configs, None, None)))
        if args.command == "key":
            return _key(args.name)
        if args.command == "status":
            return _status(args.url, args.admin_key, args.json)
        if args.command == "demo":
            from llmgw.engines.demo_model import ensure_demo_model

            print(ensure_demo_model())
            return 0
        cfg = _load(args.configs, args.host, args.port)
        if args.log_level is None:  # the config's level, for llmgw's own logs too
            logging.getLogger().setLevel(cfg.server.log_level.upper())
        overrides = config_overrides(args.host, args.port)
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            if cfg.server.worker_count > 1:  # a supervisor and its workers (llmgw/workers)
                from llmgw.workers.supervisor import supervise

                return runner.run(supervise(cfg, args.configs, overrides, args.log_level))
            return runner.run(_up(cfg, args.configs, overrides, args.log_level))
    except ConfigError as exc:
        print(f"llmgw: invalid config:\n{exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmgw", description="OpenAI-compatible LLM gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the engines and the gateway")
    up.add_argument("configs", nargs="+", help="YAML files, merged in order")
    up.add_argument("--host", help="overrides server.host")
    up.add_argument("--port", type=int, help="overrides server.port")
    up.add_argument("--log-level", default=None,
                    choices=["critical", "error", "warning", "info", "debug"])
    check = sub.add_parser("check", help="validate config files without starting anything")
    check.add_argument("configs", nargs="+")
    status = sub.add_parser("status", help="the fleet at a glance: models, replicas, "
                            "policies, recent error rates (GET /admin/status)")
    status.add_argument("url", nargs="?", default="http://127.0.0.1:8000",
                        help="the gateway's base URL (default %(default)s)")
    status.add_argument("--admin-key", help=f"the admin key (default: ${_ADMIN_KEY_ENV})")
    status.add_argument("--json", action="store_true", help="print the JSON document")
    down = sub.add_parser("down", help="stop every engine a Ray-placed config left running "
                          "(engines on Ray outlive `up`, so a restart adopts them)")
    down.add_argument("configs", nargs="+")
    sub.add_parser("demo", help="build the tiny demo model (cached) and print its path")
    key = sub.add_parser("key", help="API keys (auth:)").add_subparsers(dest="key_command",
                                                                         required=True)
    create = key.add_parser("create", help="print a new API key once, and its config entry")
    create.add_argument("--name", required=True, help="the key's name (metrics, admin API)")
    return parser


def _load(paths: Sequence[str], host: str | None, port: int | None) -> GatewayConfig:
    """The config `check` reports on and `up` starts: both run the same validation."""
    from llmgw.checks import validate

    cfg = config_overrides(host, port)(load_config(paths))
    validate(cfg)
    return cfg


def _key(name: str) -> int:
    from llmgw.tenancy.keys import new_key_text

    try:
        print(new_key_text(name), end="")
    except ValueError as exc:
        print(f"llmgw key create: {exc}", file=sys.stderr)
        return 2
    return 0


def _status(url: str, key: str | None, raw: bool) -> int:
    """GET URL/admin/status with the admin key, printed as text (or as it came)."""
    import json
    import urllib.error
    import urllib.request

    from llmgw.console import render_status

    key = key or os.environ.get(_ADMIN_KEY_ENV, "").strip() or None
    if key is None:
        print(f"llmgw status: needs the admin key: --admin-key or ${_ADMIN_KEY_ENV}",
              file=sys.stderr)
        return 2
    base = url.rstrip("/")
    request = urllib.request.Request(base + "/admin/status",
                                     headers={"authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            body = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        with contextlib.suppress(ValueError, KeyError, TypeError):
            detail = json.loads(detail)["error"]["message"]
        print(f"llmgw status: {base}/admin/status answered {exc.code}: {detail}",
              file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"llmgw status: cannot reach {base}: {reason}", file=sys.stderr)
        return 1
    if raw:
        print(body.decode())
        return 0
    print(render_status(json.loads(body), base), end="")
    return 0


def _check(paths: Sequence[str]) -> int:
    cfg = _load(paths, None, None)
    if cfg.server.worker_count > 1:
        print(f"ok  server: {cfg.server.worker_count} workers on port {cfg.server.port}")
    for model in cfg.models:
        how = "launched" if model.launched else "attached"
        where = f"{model.replica_count} {how}"
        pd = model.disaggregation
        routing = (f"prefill:{pd.prefill.routing} decode:{pd.decode.routing}" if pd is not None
                   else model.routing)
        lora = f" adapters={len(model.lora.adapters)}" if model.lora is not None else ""
        print(f"ok  {model.name}: engine={model.engine} replicas={where} routing={routing}{lora}")
    from llmgw.tools.registry import check_tools

    for spec in check_tools(cfg):
        print(f"ok  tool {spec.name}: {spec.deployment}.{spec.method}"
              f"{' batched' if spec.batched is not None else ''}")
    return 0


async def _up(cfg: GatewayConfig, paths: Sequence[str],
              overrides: Callable[[GatewayConfig], GatewayConfig],
              log_level: str | None) -> int:
    import uvicorn

    from llmgw.api.app import create_app
    from llmgw.api.wire.protocol import serving_protocol
    from llmgw.build import Gateway
    from llmgw.console import StartupView, is_terminal
    from llmgw.fleet.controller import Fleet
    from llmgw.fleet.reload import Reloader
    from llmgw.placement.base import LaunchError
    from llmgw.tools.registry import check_tools
    from llmgw.tools.toolset import ToolSet

    main_task = asyncio.current_task()
    assert main_task is not None
    loop = asyncio.get_running_loop()
    serving = False

    def on_signal(sig: int, frame: FrameType | None) -> None:
        # While engines start, a signal aborts the launch; once uvicorn serves, it owns
        # signals and drains, and this handler only swallows the re-raise it does after.
        if not serving:
            loop.call_soon_threadsafe(main_task.cancel)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)

    # Not part of `check`: whether the port is free is this moment's state, not the
    # config's (`check` runs while the old gateway still serves there). Held until uvicorn
    # binds it: an engine or tool worker started meanwhile must not be given it.
    try:
        reserved = reserve_port(cfg.server.host, cfg.server.port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", cfg.server.host, cfg.server.port,
                  exc.strerror or exc)
        return 1
    try:
        launcher, directory = await _launcher(cfg)
    except LaunchError as exc:
        release(reserved)
        log.error("%s", exc)
        return 1
    # Seeded per process: gateways sharing a fleet (several instances, workers) must not
    # make the same random choices in lockstep (round robin's start, tie-breaks).
    gateway = Gateway(cfg, rng=random.Random())
    fleet = Fleet(gateway, launcher, directory=directory)
    reloader = Reloader(fleet, paths, lambda new: validate_reload(cfg, new), overrides)
    tool_set = ToolSet(cfg, check_tools(cfg), gateway.metrics, await _tool_launcher(cfg))
    view = StartupView(sys.stderr, live=is_terminal(sys.stderr))
    view.attach(fleet.progress)
    try:
        # On a cluster a replica may wait minutes for a node: serve meanwhile.
        try:
            await fleet.start(wait=cfg.placement.backend == "local")
        finally:
            view.finish()
        await tool_set.start(wait=cfg.placement.backend == "local")
        loop.add_signal_handler(signal.SIGHUP, lambda: fleet.spawn(_reload(reloader)))
        app = create_app(gateway, fleet, reloader, tool_set)
        server = uvicorn.Server(uvicorn_config(app, cfg, log_level, serving_protocol(app)))
        serving = True
        freeze_startup_objects()
        release(reserved)  # uvicorn binds the port now
        await server.serve()
        return 0 if server.started else 1
    except LaunchError as exc:
        # A replica's failure was shown with its log as it happened: name it only.
        replica = view.shown_errors.get(str(exc))
        log.error("not serving: %s", f"replica {replica} did not start (its log is above)"
                  if replica is not None else exc)
        return 1
    except asyncio.CancelledError:
        log.info("interrupted while starting engines")
        return 130
    finally:
        release(reserved)
        loop.remove_signal_handler(signal.SIGHUP)
        if cfg.placement.backend == "local":
            log.info("stopping %d engine process(es)", len(gateway.pool.all()))
        else:
            log.info("leaving %d engine(s) running on Ray for the next gateway (`llmgw down` "
                     "stops them)", len(gateway.pool.all()))
        await asyncio.shield(tool_set.close())
        await asyncio.shield(fleet.close())
        await asyncio.shield(gateway.close())


async def _launcher(cfg: GatewayConfig) -> tuple[Launcher, Directory | None]:
    """The placement backend the config names, and where gateways sharing its fleet meet
    (Ray: every gateway on the namespace; one owns the fleet, the others follow). Ray is
    imported only when it is used."""
    if cfg.placement.backend == "local":
        from llmgw.placement.local import LocalLauncher

        return LocalLauncher(), None
    from llmgw.placement.ray_launcher import RayLauncher

    launcher = RayLauncher(cfg.placement)
    await launcher.connect()
    return launcher, await launcher.directory()


async def _tool_launcher(cfg: GatewayConfig) -> ProcessLauncher:
    """Tool workers' launcher: of the same backend as the engines', its own instance (its
    callbacks are the tool set's). On Ray its workers are named per gateway and belong to
    its Ray job: never adopted, gone with the gateway."""
    if cfg.placement.backend == "local":
        from llmgw.placement.local import LocalLauncher

        return LocalLauncher()
    from llmgw.placement.ray_launcher import TOOL_PREFIX, RayLauncher

    gateway = uuid.uuid4().hex[:8]
    launcher = RayLauncher(cfg.placement, prefix=f"{TOOL_PREFIX}{gateway}/", detached=False)
    await launcher.connect()  # joined already, with the engines' launcher
    return launcher


async def _down(cfg: GatewayConfig) -> int:
    if cfg.placement.backend != "ray":
        print("llmgw down: nothing to do: engines of placement.backend local stop with "
              "`up`", file=sys.stderr)
        return 0
    from llmgw.placement.base import LaunchError
    from llmgw.placement.ray_launcher import TOOL_PREFIX, RayLauncher

    launcher = RayLauncher(cfg.placement)
    try:
        await launcher.connect()
    except LaunchError as exc:
        print(f"llmgw down: {exc}", file=sys.stderr)
        return 1
    # Every gateway's tool workers (running gateways start theirs again).
    workers = await RayLauncher(cfg.placement, prefix=TOOL_PREFIX).remove_all()
    removed = await launcher.remove_all()
    await launcher.remove_directory()
    print(f"stopped {removed} replica(s) and {workers} tool worker(s) in Ray namespace "
          f"{cfg.placement.namespace!r}")
    return 0


async def _reload(reloader: Reloader) -> None:
    """SIGHUP: the outcome is logged (and shown by GET /admin/status)."""
    with contextlib.suppress(ConfigError):
        await reloader.reload()


if __name__ == "__main__":
    raise SystemExit(main())
