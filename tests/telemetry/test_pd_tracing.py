"""A disaggregated request's trace: the routing decision with its path, a span per leg,
each with the engine request inside it. For SGLang the engines are
tests/fakes/sglang_pd.py (SGLang's prefill and decode servers need a GPU; the fake follows
their protocol); the gateway runs in this process with the SDK's in-memory exporter."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from llmgw.api.app import create_app
from llmgw.config import GatewayConfig
from llmgw.telemetry import make_tracing
from tests.support import Server, free_port, in_process_gateway, start_fake_engine

SERVED = "deepseek-ai/DeepSeek-V3"


@pytest.fixture(scope="module")
def engines() -> Iterator[dict[str, tuple[Server, int]]]:
    servers: dict[str, tuple[Server, int]] = {}
    try:
        for mode in ("prefill", "decode"):
            port, bootstrap = free_port(), free_port()
            argv = [sys.executable, "-m", "tests.fakes.sglang_pd", "--port", str(port),
                    "--served-model-name", SERVED, "--disaggregation-mode", mode,
                    "--bootstrap-timeout-s", "20"]
            if mode == "prefill":
                argv += ["--disaggregation-bootstrap-port", str(bootstrap)]
            servers[mode] = (Server(argv, port, "/v1/models", timeout_s=30), bootstrap)
        yield servers
    finally:
        for server, _ in servers.values():
            server.stop()


def parent_name(span: ReadableSpan, spans: list[ReadableSpan]) -> str | None:
    assert span.parent is not None
    return next(s.name for s in spans if s.context.span_id == span.parent.span_id)


async def traced_request(model: dict[str, object], stream: bool) -> list[ReadableSpan]:
    """One chat request to ``model`` through an in-process gateway that traces; its spans."""
    config = GatewayConfig.model_validate({
        "telemetry": {"tracing": {"endpoint": "http://127.0.0.1:9/v1/traces"}},
        "models": [model]})
    exporter = InMemorySpanExporter()
    gateway = in_process_gateway(config, make_tracing(config.telemetry.tracing, exporter))
    try:
        transport = httpx.ASGITransport(app=create_app(gateway))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            response = await client.post("/v1/chat/completions", timeout=30, json={
                "model": model["name"], "max_tokens": 4, "stream": stream,
                "messages": [{"role": "user", "content": "one two three"}]})
        assert response.status_code == 200
        assert not stream or response.text.endswith("data: [DONE]\n\n")
    finally:
        await gateway.close()
    return list(exporter.get_finished_spans())


async def test_each_leg_is_a_span_holding_its_engine_request(
        engines: dict[str, tuple[Server, int]]) -> None:
    (prefill, bootstrap), (decode, _) = engines["prefill"], engines["decode"]
    spans = await traced_request({
        "name": "ds", "engine": "sglang", "served_model_name": SERVED,
        "disaggregation": {"prefill": {"url": prefill.url, "bootstrap_port": bootstrap},
                           "decode": {"url": decode.url}}}, stream=True)
    assert sorted(s.name for s in spans) == sorted([
        "llmgw.request", "llmgw.parse", "llmgw.route", "llmgw.pd.prefill", "llmgw.pd.decode",
        "llmgw.engine", "llmgw.engine"])
    legs = {s.name: s for s in spans if s.name.startswith("llmgw.pd.")}
    assert {name: dict(s.attributes or {}) for name, s in legs.items()} == {
        "llmgw.pd.prefill": {"llmgw.replica": "ds-prefill-0", "llmgw.pd.leg": "prefill"},
        "llmgw.pd.decode": {"llmgw.replica": "ds-decode-0", "llmgw.pd.leg": "decode"}}
    assert {parent_name(leg, spans) for leg in legs.values()} == {"llmgw.request"}
    calls = {str((s.attributes or {})["url.full"]): parent_name(s, spans)
             for s in spans if s.name == "llmgw.engine"}
    assert calls == {prefill.url + "/v1/chat/completions": "llmgw.pd.prefill",
                     decode.url + "/v1/chat/completions": "llmgw.pd.decode"}
    route = next(s for s in spans if s.name == "llmgw.route")
    decision = json.loads(str((route.attributes or {})["llmgw.route.decision"]))
    assert decision["disaggregation"]["path"] == "disaggregated"
    assert decision["ranked"] == ["ds-decode-0"]
    root = next(s for s in spans if s.name == "llmgw.request")
    assert {k: (root.attributes or {})[k] for k in ("llmgw.pd_path", "llmgw.prefill_replica",
                                                    "llmgw.replica")} == {
        "llmgw.pd_path": "disaggregated", "llmgw.prefill_replica": "ds-prefill-0",
        "llmgw.replica": "ds-decode-0"}


async def test_vllm_legs_run_one_after_the_other_under_the_request() -> None:
    """vLLM's protocol (prefill leg first, then decode) on two fake engines: the fake
    answers the prefill leg like any request and ignores kv_transfer_params, which is all
    the gateway's side of the protocol needs here."""
    prefill, decode = start_fake_engine(), start_fake_engine()
    try:
        spans = await traced_request({"name": "fake", "engine": "vllm", "disaggregation": {
            "prefill": {"url": prefill.url}, "decode": {"url": decode.url},
            "conditional": {"enabled": False}}}, stream=False)  # split every request
    finally:
        prefill.stop()
        decode.stop()
    legs = sorted((s for s in spans if s.name.startswith("llmgw.pd.")),
                  key=lambda s: s.start_time or 0)
    assert [(s.name, (s.attributes or {})["llmgw.replica"]) for s in legs] == [
        ("llmgw.pd.prefill", "fake-prefill-0"), ("llmgw.pd.decode", "fake-decode-0")]
    assert (legs[0].end_time or 0) <= (legs[1].start_time or 0)  # one after the other
    assert {parent_name(s, spans) for s in spans if s.name == "llmgw.engine"} == {
        "llmgw.pd.prefill", "llmgw.pd.decode"}
