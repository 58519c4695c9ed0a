"""The baseline llmgw is compared against: a plain pass-through proxy, as written in an
afternoon with FastAPI + uvicorn + httpx. Used only by ``bench/overhead.py``.

Each route reads the JSON body, forwards it with one shared ``httpx.AsyncClient`` and
returns the JSON answer, or a ``StreamingResponse`` of the upstream's raw bytes when the
client asked for a stream. Two courtesies a careful afternoon would add are kept so the
comparison is fair: a keep-alive pool large enough for the benchmark's concurrency, and
no access log (llmgw runs without one too).

    python bench/baseline_proxy.py --upstream http://127.0.0.1:9001 --port 8124
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask


def create_app(upstream: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
        async with httpx.AsyncClient(base_url=upstream, timeout=None, limits=limits) as client:
            app.state.client = client
            yield

    app = FastAPI(lifespan=lifespan)

    async def forward(request: Request, path: str) -> Response:
        client: httpx.AsyncClient = request.app.state.client
        body: dict[str, Any] = await request.json()
        if body.get("stream"):
            upstream_request = client.build_request("POST", path, json=body)
            upstream_response = await client.send(upstream_request, stream=True)
            return StreamingResponse(
                upstream_response.aiter_raw(), status_code=upstream_response.status_code,
                media_type="text/event-stream", background=BackgroundTask(upstream_response.aclose),
            )
        upstream_response = await client.post(path, json=body)
        return JSONResponse(upstream_response.json(), status_code=upstream_response.status_code)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await forward(request, "/v1/chat/completions")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await forward(request, "/v1/completions")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="FastAPI + httpx pass-through proxy")
    parser.add_argument("--upstream", required=True, help="engine base URL, no /v1")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(args.upstream.rstrip("/")), host=args.host, port=args.port,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
