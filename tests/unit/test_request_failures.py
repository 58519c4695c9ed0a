"""A generation route that fails in a way nobody planned for: the client gets a 500 in
OpenAI's shape with a generic message, the metrics record that 500 (not a client
disconnect), and the traceback is logged once. In process, with no engine behind it: the
failure is injected before any engine is contacted."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from llmgw.api.app import create_app
from llmgw.build import Gateway
from llmgw.config import GatewayConfig
from tests.support import in_process_gateway


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    config = GatewayConfig.model_validate({"models": [
        {"name": "m", "engine": "openai", "url": ["http://127.0.0.1:9"]}]})
    built = in_process_gateway(config)
    yield built
    await built.close()


def samples(gateway: Gateway, prefix: str) -> dict[str, float]:
    text = gateway.metrics.exposition().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith(prefix)}


@pytest.mark.parametrize("stream", [False, True], ids=["non-streaming", "streaming"])
async def test_an_unexpected_exception_is_a_500_recorded_as_500(
        gateway: Gateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        stream: bool) -> None:
    def broken(*args: object, **kwargs: object) -> bytes:
        raise RuntimeError("secret detail that must not reach the client")

    monkeypatch.setattr(gateway.dispatcher, "upstream_body", broken)
    transport = httpx.ASGITransport(app=create_app(gateway), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        response = await client.post("/v1/chat/completions", headers={"x-request-id": "r-7"},
                                     json={"model": "m", "stream": stream,
                                           "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 500
    assert response.json() == {"error": {"message": "internal error (request_id=r-7)",
                                         "type": "server_error", "param": None, "code": None}}
    assert samples(gateway, "llmgw_requests_total{") == {
        'llmgw_requests_total{endpoint="chat",model="m",status="500"}': 1.0}
    assert set(samples(gateway, "llmgw_client_disconnects_total{").values()) == {0.0}
    tracebacks = [r for r in caplog.records if r.exc_info and r.levelno >= logging.ERROR]
    assert len(tracebacks) == 1 and "r-7" in tracebacks[0].getMessage()
    assert isinstance(tracebacks[0].exc_info[1], RuntimeError)  # type: ignore[index]
