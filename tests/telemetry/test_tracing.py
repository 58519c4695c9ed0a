"""Tracing with the OpenTelemetry SDK's in-memory exporter: the gateway runs in this
process (httpx.ASGITransport) in front of a real fake-engine process, which reports the
traceparent it was sent (/fake/last_trace)."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from llmgw.api.app import create_app
from llmgw.build import Gateway
from llmgw.config import GatewayConfig
from llmgw.telemetry import NO_TRACING, SPANS, make_tracing
from tests.support import ROOT, Server, in_process_gateway, start_fake_engine

CHAT = {"model": "fake", "max_tokens": 4,
        "messages": [{"role": "user", "content": "a prompt long enough to be hashed " * 4}]}


@pytest.fixture(scope="module")
def engine() -> Iterator[Server]:
    server = start_fake_engine()
    yield server
    server.stop()


def config(engine: Server, tracing: dict[str, Any] | None) -> GatewayConfig:
    return GatewayConfig.model_validate({
        "models": [{"name": "fake", "engine": "openai", "url": [engine.url],
                    "routing": "prefix-aware"}],
        **({"telemetry": {"tracing": tracing}} if tracing is not None else {})})


class Traced:
    def __init__(self, gateway: Gateway, exporter: InMemorySpanExporter) -> None:
        self.gateway, self.exporter = gateway, exporter
        transport = httpx.ASGITransport(app=create_app(gateway))
        self.client = httpx.AsyncClient(transport=transport, base_url="http://gw")

    def spans(self) -> dict[str, ReadableSpan]:
        finished = self.exporter.get_finished_spans()
        by_name = {span.name: span for span in finished}
        assert len(by_name) == len(finished), [s.name for s in finished]
        assert set(by_name) <= set(SPANS)
        return by_name


async def traced(engine: Server, sample_ratio: float = 1.0) -> AsyncIterator[Traced]:
    cfg = config(engine, {"endpoint": "http://127.0.0.1:9/v1/traces",
                          "sample_ratio": sample_ratio})
    exporter = InMemorySpanExporter()
    gateway = in_process_gateway(cfg, make_tracing(cfg.telemetry.tracing, exporter))
    traced = Traced(gateway, exporter)
    yield traced
    await traced.client.aclose()
    await gateway.close()


@pytest.fixture
async def gateway(engine: Server) -> AsyncIterator[Traced]:
    async for one in traced(engine):
        yield one


@pytest.fixture
async def unsampled(engine: Server) -> AsyncIterator[Traced]:
    async for one in traced(engine, sample_ratio=0.0):
        yield one


def engine_saw(engine: Server) -> tuple[int, int, bool] | None:
    """The traceparent the engine last got: (trace id, parent span id, sampled)."""
    header = httpx.get(engine.url + "/fake/last_trace").json()["traceparent"]
    if header is None:
        return None
    version, trace_id, span_id, flags = header.split("-")
    assert version == "00"
    return int(trace_id, 16), int(span_id, 16), bool(int(flags, 16) & 1)


def ids(span: ReadableSpan) -> tuple[int, int]:
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


async def test_a_request_continues_the_callers_trace_into_the_engine(
        gateway: Traced, engine: Server) -> None:
    trace_id, caller_span = secrets.randbits(128), secrets.randbits(64)
    incoming = f"00-{trace_id:032x}-{caller_span:016x}-01"
    response = await gateway.client.post("/v1/chat/completions", json=CHAT,
                                         headers={"traceparent": incoming,
                                                  "x-request-id": "r-1"})
    assert response.status_code == 200
    spans = gateway.spans()
    assert set(spans) == {"llmgw.request", "llmgw.parse", "llmgw.route", "llmgw.engine"}
    assert {ids(s)[0] for s in spans.values()} == {trace_id}

    root = spans["llmgw.request"]
    assert root.kind == SpanKind.SERVER
    assert root.parent is not None and root.parent.span_id == caller_span
    root_id = ids(root)[1]
    assert {name: s.parent.span_id for name, s in spans.items()  # type: ignore[union-attr]
            if name != "llmgw.request"} == dict.fromkeys(
        ("llmgw.parse", "llmgw.route", "llmgw.engine"), root_id)

    attributes = dict(root.attributes or {})
    assert {k: attributes[k] for k in ("llmgw.request_id", "llmgw.model", "llmgw.replica",
                                       "llmgw.policy", "llmgw.status", "llmgw.outcome",
                                       "llmgw.completion_tokens",
                                       "http.response.status_code")} == {
        "llmgw.request_id": "r-1", "llmgw.model": "fake", "llmgw.replica": "fake-0",
        "llmgw.policy": "prefix-aware", "llmgw.status": 200, "llmgw.outcome": "ok",
        "llmgw.completion_tokens": 4, "http.response.status_code": 200}

    route = dict(spans["llmgw.route"].attributes or {})
    assert route["llmgw.route.policy"] == "prefix-aware"
    assert route["llmgw.route.ranked"] == ("fake-0",)
    decision = json.loads(str(route["llmgw.route.decision"]))
    assert decision["ranked"] == ["fake-0"]
    assert set(decision["scores"]) >= {"prefix-cache", "least-load"}
    assert set(decision["scores"]["least-load"]) == {"fake-0"}

    call = spans["llmgw.engine"]
    assert call.kind == SpanKind.CLIENT
    assert dict(call.attributes or {}) == {
        "url.full": engine.url + "/v1/chat/completions", "http.request.method": "POST",
        "http.response.status_code": 200}
    # The engine was sent the engine span as its parent, sampled.
    assert engine_saw(engine) == (*ids(call), True)


async def test_a_stream_starts_a_trace_and_marks_its_first_token(
        gateway: Traced, engine: Server) -> None:
    response = await gateway.client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert response.status_code == 200 and response.text.endswith("data: [DONE]\n\n")
    root = gateway.spans()["llmgw.request"]
    assert root.parent is None
    assert [event.name for event in root.events] == ["first_token"]
    attributes = dict(root.attributes or {})
    assert attributes["llmgw.stream"] is True
    assert 0 < attributes["llmgw.ttft_ms"] <= attributes["llmgw.latency_ms"]  # type: ignore[operator]
    assert root.start_time is not None and root.end_time is not None
    assert root.start_time < root.events[0].timestamp <= root.end_time
    assert engine_saw(engine) == (*ids(gateway.spans()["llmgw.engine"]), True)


async def test_a_refused_request_is_traced_with_its_status(gateway: Traced) -> None:
    response = await gateway.client.post("/v1/chat/completions",
                                         json={**CHAT, "model": "no-such-model"})
    assert response.status_code == 404
    spans = gateway.spans()
    assert set(spans) == {"llmgw.request", "llmgw.parse"}
    attributes = dict(spans["llmgw.request"].attributes or {})
    assert (attributes["llmgw.status"], attributes["llmgw.error"]) == (404, "model_not_found")
    assert "llmgw.replica" not in attributes  # null fields are left out


async def test_sampling_keeps_a_sampled_callers_trace_and_drops_the_rest(
        unsampled: Traced, engine: Server) -> None:
    assert (await unsampled.client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    assert unsampled.spans() == {}
    # Not recorded, yet the engine still gets the trace, marked "not sampled".
    saw = engine_saw(engine)
    assert saw is not None and saw[2] is False

    incoming = f"00-{secrets.randbits(128):032x}-{secrets.randbits(64):016x}-01"
    response = await unsampled.client.post("/v1/chat/completions", json=CHAT,
                                           headers={"traceparent": incoming})
    assert response.status_code == 200
    assert set(unsampled.spans()) == {"llmgw.request", "llmgw.parse", "llmgw.route",
                                      "llmgw.engine"}


async def test_without_tracing_no_span_and_no_traceparent(engine: Server) -> None:
    gateway = in_process_gateway(config(engine, None))
    try:
        assert gateway.tracing is NO_TRACING and gateway.dispatcher.tracing is NO_TRACING
        transport = httpx.ASGITransport(app=create_app(gateway))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            incoming = f"00-{secrets.randbits(128):032x}-{secrets.randbits(64):016x}-01"
            response = await client.post("/v1/chat/completions", json=CHAT,
                                         headers={"traceparent": incoming})
        assert response.status_code == 200
        assert engine_saw(engine) is None  # the caller's header is not passed on either
    finally:
        await gateway.close()


# The OpenTelemetry SDK and exporter made unimportable, as on an install without the
# `tracing` extra (FastAPI itself needs opentelemetry-api: that one stays).
WITHOUT_OTEL = """
import asyncio, importlib.abc, sys

class NoOpenTelemetry(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[:2] in (["opentelemetry", "sdk"], ["opentelemetry", "exporter"]):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoOpenTelemetry())

import httpx
from llmgw.api.app import create_app
from llmgw.checks import validate
from llmgw.config import ConfigError, GatewayConfig
from tests.support import in_process_gateway

models = [{"name": "fake", "engine": "openai", "url": [sys.argv[1]]}]

async def main():
    gateway = in_process_gateway(GatewayConfig.model_validate({"models": models}))
    transport = httpx.ASGITransport(app=create_app(gateway))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        response = await client.post("/v1/chat/completions", json={
            "model": "fake", "messages": [{"role": "user", "content": "hi"}]})
    await gateway.close()
    print("status", response.status_code)

asyncio.run(main())
try:
    validate(GatewayConfig.model_validate({"models": models, "telemetry": {
        "tracing": {"endpoint": "http://127.0.0.1:4318/v1/traces"}}}))
except ConfigError as exc:
    print("refused", exc)
"""


def test_the_gateway_serves_without_opentelemetry_installed(engine: Server) -> None:
    done = subprocess.run([sys.executable, "-c", WITHOUT_OTEL, engine.url], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "status 200",
        "refused telemetry.tracing: the OpenTelemetry SDK is not installed here (pip install "
        "'llmgw[tracing]')"]


async def test_waiting_for_a_lora_adapter_is_a_span(engine: Server, tmp_path: Path) -> None:
    """The fake engine takes vLLM's runtime adapter API, so it stands in for vLLM here."""
    cfg = GatewayConfig.model_validate({
        "server": {"state_dir": str(tmp_path)},
        "telemetry": {"tracing": {"endpoint": "http://127.0.0.1:9/v1/traces"}},
        "models": [{"name": "fake", "engine": "vllm", "url": [engine.url],
                    "lora": {"adapters": [{"name": "sql", "source": str(tmp_path)}]}}]})
    exporter = InMemorySpanExporter()
    gateway = in_process_gateway(cfg, make_tracing(cfg.telemetry.tracing, exporter))
    traced = Traced(gateway, exporter)
    try:
        response = await traced.client.post("/v1/chat/completions",
                                            json={**CHAT, "model": "sql"})
        assert response.status_code == 200
        wait = traced.spans()["llmgw.lora.wait"]
        assert dict(wait.attributes or {}) == {"llmgw.adapter": "sql",
                                               "llmgw.replica": "fake-0"}
        assert wait.parent is not None
        assert wait.parent.span_id == ids(traced.spans()["llmgw.request"])[1]
        assert dict(traced.spans()["llmgw.request"].attributes or {})["llmgw.adapter"] == "sql"
        assert httpx.get(engine.url + "/v1/models").json()["data"][1]["id"] == "sql"
    finally:
        await traced.client.aclose()
        await gateway.close()


async def test_each_round_of_a_tool_loop_is_a_span_with_its_calls() -> None:
    """The fake engine's scripted tool calls (a fake: no CPU model calls tools) ask for
    the in-process tool twice, then answer: two rounds of calls, three model requests."""
    from llmgw.tools.registry import check_tools
    from llmgw.tools.toolset import ToolSet

    engine = start_fake_engine("--scripted-tool-calls")
    cfg = GatewayConfig.model_validate({
        "models": [{"name": "fake", "engine": "openai", "url": [engine.url]}],
        "tools": [{"name": "rec", "import_path": "tests.fakes.tools:Recorder", "replicas": 0}],
        "telemetry": {"tracing": {"endpoint": "http://127.0.0.1:9/v1/traces"}}})
    exporter = InMemorySpanExporter()
    gateway = in_process_gateway(cfg, make_tracing(cfg.telemetry.tracing, exporter))
    tools = ToolSet(cfg, check_tools(cfg), gateway.metrics)
    await tools.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(
                app=create_app(gateway, tool_set=tools)), base_url="http://gw") as client:
            answer = await client.post("/v1/chat/completions", json={
                "model": "fake", "max_tokens": 4,
                "messages": [{"role": "user", "content": "call=rec_echo tool_rounds=2"}],
                "tools": [{"type": "mcp", "server_label": "llmgw",
                           "require_approval": "never", "allowed_tools": ["rec_echo"]}]})
        assert answer.status_code == 200, answer.text
    finally:
        await tools.close()
        await gateway.close()
        engine.stop()
    spans = exporter.get_finished_spans()
    rounds = [s for s in spans if s.name == "llmgw.tool.round"]
    assert [(s.attributes or {}).get("llmgw.tool.round") for s in rounds] == [1, 2]
    assert all(list((s.attributes or {}).get("llmgw.tool.calls", ())) == ["rec_echo"]
               for s in rounds)
    assert len([s for s in spans if s.name == "llmgw.engine"]) == 3
    (root,) = [s for s in spans if s.name == "llmgw.request"]
    assert all(s.context.trace_id == root.context.trace_id for s in spans)


def test_every_span_is_listed_and_documented() -> None:
    """SPANS names every span the gateway opens (the tests above stay inside it), and the
    operations page describes each."""
    text = (ROOT / "docs" / "operations.md").read_text()
    assert [name for name in SPANS if f"`{name}`" not in text] == []
