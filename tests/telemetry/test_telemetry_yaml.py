"""`llmgw up configs/telemetry.yaml` exactly as shipped, its collector address pointed at
an OTLP/HTTP receiver in this test: spans reach it through the real batching exporter
(flushed when the gateway stops), the launched fake engines get the traceparent, and
the access log writes its lines to standard error."""

from __future__ import annotations

import json
import secrets
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.support import (
    ROOT,
    Server,
    check_like_llmgw,
    free_port,
    launched_engine_urls,
)


class Collector:
    """An OTLP/HTTP traces receiver: keeps every export request it is sent."""

    def __init__(self) -> None:
        self.exports: list[ExportTraceServiceRequest] = []
        collector = self

        class Receive(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["content-length"]))
                collector.exports.append(ExportTraceServiceRequest.FromString(body))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Receive)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def spans(self) -> list[tuple[str, str, bytes]]:
        """(service name, span name, trace id) of every span received."""
        found = []
        for export in self.exports:
            for resource in export.resource_spans:
                service = next(a.value.string_value for a in resource.resource.attributes
                               if a.key == "service.name")
                found += [(service, span.name, span.trace_id)
                          for scope in resource.scope_spans for span in scope.spans]
        return found

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    receiver = Collector()
    yield receiver
    receiver.close()


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
    assert {service for service, _, _ in spans} == {"llmgw"}
    names = sorted(name for _, name, _ in spans)
    assert names == sorted(["llmgw.request", "llmgw.parse", "llmgw.route", "llmgw.engine"] * 2)
    assert sorted(name for _, name, tid in spans if tid.hex() == trace_id) == sorted(
        ["llmgw.request", "llmgw.parse", "llmgw.route", "llmgw.engine"])

    lines = [json.loads(line) for line in gateway.output().splitlines()
             if line.startswith("{")]
    assert [(r["request_id"], r["status"], r["stream"], r["policy"]) for r in lines] == [
        ("traced", 200, False, "prefix-aware"), ("new", 200, True, "prefix-aware")]
