"""What every serving process sets up the same way: `llmgw up` with one worker, and each
worker of ``server.workers: N`` (``llmgw.workers.worker``). Light to import: uvicorn and
the web stack are imported by the functions that need them."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from llmgw.config import ConfigError, GatewayConfig

if TYPE_CHECKING:
    import uvicorn


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def freeze_startup_objects() -> None:
    """Move everything alive after startup (modules, the app, the config: ~70k objects) out
    of the collector's reach. Full collections otherwise walk them all and stop the loop
    for up to 35 ms: bench/overhead.py traced the gateway's p99 to exactly that."""
    gc.collect()
    gc.freeze()


def config_overrides(
    host: str | None, port: int | None
) -> Callable[[GatewayConfig], GatewayConfig]:
    """The command line's --host / --port over a config (reloads keep them too)."""
    given = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}

    def apply(cfg: GatewayConfig) -> GatewayConfig:
        if not given:
            return cfg
        return cfg.model_copy(update={"server": cfg.server.model_copy(update=given)})

    return apply


def validate_reload(running: GatewayConfig, new: GatewayConfig) -> None:
    """What a reload must pass: ``check``, and the same ``tools:`` and ``server.workers``
    (tool workers, their classes and the worker processes are set up once, at start)."""
    from llmgw.checks import validate

    validate(new)
    if new.tools != running.tools:
        raise ConfigError(
            "tools: changed; tools are set up at start: restart the gateway to change them"
        )
    if new.server.worker_count != running.server.worker_count:
        raise ConfigError(
            "server.workers: changed; workers are started once: restart the gateway to change them"
        )


def uvicorn_config(app: Any, cfg: GatewayConfig, log_level: str | None,
                   http: Any = "httptools") -> uvicorn.Config:
    """How llmgw serves ``app`` with uvicorn on ``server.host:port``; ``http``: the
    protocol (llmgw.api.wire.protocol.serving_protocol's, for the gateway's app)."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=cfg.server.host,
        port=cfg.server.port,
        log_level=log_level or cfg.server.log_level,
        access_log=False,
        # Seconds as given: uvicorn hands it to asyncio.wait_for, where 0.5 waits half a
        # second and 0 not at all (None would wait for every open stream, however long).
        timeout_graceful_shutdown=cfg.server.drain_timeout_s,  # type: ignore[arg-type]
        timeout_keep_alive=cfg.server.keep_alive_s,  # type: ignore[arg-type]
        loop="none",
        http=http,
        lifespan="on",
        ssl_certfile=_tls_file(cfg, "cert"),
        ssl_keyfile=_tls_file(cfg, "key"),
    )


def _tls_file(cfg: GatewayConfig, which: str) -> str | None:
    """``server.tls``'s certificate or key file for uvicorn (checked by `check`); None
    serves plain HTTP."""
    tls = cfg.server.tls
    return os.path.expanduser(getattr(tls, which)) if tls is not None else None


def cannot_listen(host: str, port: int) -> str | None:
    """Why uvicorn could not bind ``host:port`` (None: it can), found before any engine is
    launched (``reserve_port``, released at once)."""
    try:
        release(reserve_port(host, port))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def reserve_port(host: str, port: int) -> list[socket.socket]:
    """``host:port`` bound (not listening: a client is refused as before) as asyncio's
    create_server binds it, every address, SO_REUSEADDR; raises OSError. Held while the
    engines and tool workers start, so that none of them is given the gateway's port by
    the kernel, and released just before uvicorn binds it. Never SO_REUSEPORT: a gateway
    already serving there (workers or not) must make this fail, not let a second one join
    its port."""
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, address in _addresses(host, port):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # as create_server: no v4 on the v6 socket
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError:
        release(sockets)
        raise
    return sockets


def release(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def shared_port_sockets(host: str, port: int) -> list[socket.socket]:
    """One worker's listening sockets on ``host:port`` with SO_REUSEPORT: every worker
    binds its own, and the kernel spreads new connections over them (by a hash of the
    connection, so a keep-alive connection stays with one worker)."""
    sockets = []
    try:
        for family, kind, proto, address in _addresses(host, port):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def pick_port(host: str) -> int:
    """A free port for ``server.port: 0`` with several workers (each must bind the same)."""
    family, kind, proto, address = _addresses(host, 0)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.bind(address)
        return int(probe.getsockname()[1])


def _addresses(host: str, port: int) -> list[tuple[int, int, int, Any]]:
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return [(family, kind, proto, address) for family, kind, proto, _, address in infos]
