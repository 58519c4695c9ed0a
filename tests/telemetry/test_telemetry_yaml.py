"""`llmgw up configs/telemetry.yaml` exactly as shipped, its collector address pointed at
an OTLP/HTTP receiver in this test: spans reach it through the real batching exporter
(flushed when the gateway stops), the launched fake engines get the traceparent, and
the access log writes its lines to standard error."""

from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path

import httpx
import yaml

from tests.support import (
    ROOT,
    Server,
    check_like_llmgw,
    free_port,
    launched_engine_urls,
)
from tests.telemetry.collector import Collector


def test_the_shipped_config_traces_into_a_collector_and_logs_each_request(
        collector: Collector, tmp_path: Path) -> None:
    override = tmp_path / "collector.yaml"
    override.write_text(yaml.safe_dump({"telemetry": {"tracing": {"endpoint": collector.url}}}))
    files = [ROOT / "configs" / "telemetry.yaml", override]
    check_like_llmgw(files)
    port = free_port()
    gateway = Server([sys.executable, "-m", "llmgw", "up", *map(str, files), "--port",
                      str(port)], port, "/ready", timeout_s=60)
    trace_id = secrets.token_hex(16)
    try:
        engines = launched_engine_urls(gateway)
        assert len(engines) == 2
        body = {"model": "fake", "max_tokens": 3,
                "messages": [{"role": "user", "content": "hello"}]}
        traced = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=30,
                            headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01",
                                     "x-request-id": "traced"})
        assert traced.status_code == 200
        seen = [httpx.get(url + "/fake/last_trace").json()["traceparent"] for url in engines]
        assert sum(1 for header in seen if header and header[3:35] == trace_id) == 1
        streamed = httpx.post(gateway.url + "/v1/chat/completions", timeout=30,
                              json={**body, "stream": True}, headers={"x-request-id": "new"})
        assert streamed.status_code == 200
    finally:
        assert gateway.stop() == 0  # the exporter flushes as the gateway stops

    spans = collector.spans()
    assert {span.service for span in spans} == {"llmgw"}
    names = sorted(span.name for span in spans)
    assert names == sorted(["llmgw.request", "llmgw.parse", "llmgw.route", "llmgw.engine"] * 2)
    assert sorted(s.name for s in spans if s.trace_id.hex() == trace_id) == sorted(
        ["llmgw.request", "llmgw.parse", "llmgw.route", "llmgw.engine"])

    lines = [json.loads(line) for line in gateway.output().splitlines()
             if line.startswith("{")]
    assert [(r["request_id"], r["status"], r["stream"], r["policy"]) for r in lines] == [
        ("traced", 200, False, "prefix-aware"), ("new", 200, True, "prefix-aware")]
