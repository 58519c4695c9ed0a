"""The ``telemetry:`` section: OpenTelemetry tracing of requests through the gateway and
into the engines. Absent (the default): no span is made and nothing is imported."""

from __future__ import annotations

from pydantic import Field, field_validator

from llmgw.config.base import _Strict


class TracingConfig(_Strict):
    """Spans per request, exported over OTLP/HTTP (protobuf) in batches from a background
    thread. Read at start: a reload that changes it is refused."""

    # The collector's OTLP/HTTP traces URL, e.g. http://otel-collector:4318/v1/traces.
    # Launched vLLM replicas export their own spans here too (--otlp-traces-endpoint).
    endpoint: str = Field(min_length=1)
    service_name: str = Field(default="llmgw", min_length=1)
    # The share of new traces kept (0..1). A request that arrives with a W3C traceparent
    # follows its caller's decision instead, so a trace is never cut in half.
    sample_ratio: float = Field(default=1.0, ge=0, le=1)

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL (OTLP/HTTP), got {value!r}")
        return value


class TelemetryConfig(_Strict):
    tracing: TracingConfig | None = None
