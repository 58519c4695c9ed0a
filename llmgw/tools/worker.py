"""A tool worker: one replica of a ``tools:`` entry as its own HTTP server process.

``python -m llmgw.tools.worker --host H --port P --config JSON`` (JSON: the entry, as
the gateway validated it) builds one instance of the class, then serves on ``H``
(loopback, or a Ray node's address). Calls must carry the gateway's token
(``worker_spec.TOKEN_HEADER``, from ``$LLMGW_TOOL_TOKEN``); without it they get 401 and
nothing runs:

- ``GET /health``: 200 once the instance is built.
- ``POST /call/{method}``: the JSON body is the arguments; 200 ``{"output", "batch_size"}``,
  400 ``{"error": {"message", "param"}}`` for arguments the schema refuses, 404 for an
  unknown method, 500 ``{"error": {"message"}}`` when the tool raised.
- ``POST /batch/{method}``: ``{"max_batch_size", "batch_wait_timeout_s"}`` (either)
  changes a batched method's bounds from its next batch.

SIGTERM stops accepting and lets calls in flight finish (aiohttp's graceful shutdown).
Started by the tool set's launcher under the same guard as engines (it dies with the
gateway's process, or its Ray actor).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import os
import signal
import sys

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from llmgw.config import ToolConfig
from llmgw.context import CallContext, depth_of, enter, leave
from llmgw.tools.host import ToolHost, ToolRaised, UnknownMethod
from llmgw.tools.registry import deployment_specs
from llmgw.tools.schema import ArgumentsInvalid
from llmgw.tools.worker_spec import TOKEN_ENV, TOKEN_HEADER

log = logging.getLogger("llmgw.tools.worker")
# How long calls in flight may take to finish after SIGTERM.
_SHUTDOWN_GRACE_S = 30.0


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status,
                        content_type="application/json")


def _error(message: str, status: int, param: str | None = None) -> web.Response:
    return _json({"error": {"message": message, "param": param}}, status)


def _token_check(token: str) -> Middleware:
    """Every route but /health requires the gateway's token, checked in constant time
    before the body is read."""
    expected = token.encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get(TOKEN_HEADER, "").encode()
        if request.path != "/health" and not hmac.compare_digest(given, expected):
            return _error(f"missing or wrong {TOKEN_HEADER}: this worker takes calls from "
                          "its gateway only", 401)
        return await handler(request)

    return check


def create_worker_app(host: ToolHost, gateway_url: str, token: str) -> web.Application:
    async def health(request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def call(request: web.Request) -> web.Response:
        method = request.match_info["method"]
        token = enter(CallContext(gateway_url, depth_of(request.headers),
                                  request.headers.get("authorization")))
        try:
            output, size = await host.call(method, await request.read())
        except UnknownMethod:
            return _error(f"no tool method {method!r}", 404)
        except ArgumentsInvalid as exc:
            return _error(exc.message, 400, exc.param)
        except ToolRaised as exc:
            return _error(str(exc), 500)
        finally:
            leave(token)
        return _json({"output": output, "batch_size": size})

    async def batch(request: web.Request) -> web.Response:
        method = request.match_info["method"]
        try:
            bounds = orjson.loads(await request.read())
            host.set_batch_bounds(method, bounds.get("max_batch_size"),
                                  bounds.get("batch_wait_timeout_s"))
        except UnknownMethod:
            return _error(f"no batched tool method {method!r}", 404)
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
            return _error(f"bad batch bounds: {exc}", 400)
        return _json({"ok": True})

    app = web.Application(middlewares=[_token_check(token)])
    app.router.add_get("/health", health)
    app.router.add_post("/call/{method}", call)
    app.router.add_post("/batch/{method}", batch)
    return app


async def _serve(cfg: ToolConfig, host_name: str, port: int, gateway_url: str,
                 token: str) -> None:
    specs = deployment_specs(cfg, f"tools[{cfg.name}]")
    host = await ToolHost.create(cfg, specs)
    runner = web.AppRunner(create_worker_app(host, gateway_url, token),
                           shutdown_timeout=_SHUTDOWN_GRACE_S, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host_name, port).start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:  # stops listening, then waits for the calls in flight
        await runner.cleanup()
        await host.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="llmgw tool worker")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--config", required=True, help="the tools: entry, as JSON")
    parser.add_argument("--gateway-url", required=True,
                        help="where the tool's own calls go (llmgw.context)")
    args = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        sys.exit(f"llmgw tool worker: ${TOKEN_ENV} is not set: a worker serves its gateway "
                 "only, and takes its token from the environment")
    cfg = ToolConfig.model_validate_json(args.config)
    asyncio.run(_serve(cfg, args.host, args.port, args.gateway_url, token))


if __name__ == "__main__":
    main()
