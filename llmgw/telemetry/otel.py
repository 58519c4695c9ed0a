"""Tracing with the OpenTelemetry SDK: spans batched to an OTLP/HTTP collector from the
SDK's own thread. Imported only when ``telemetry.tracing`` is configured (``make_tracing``).

The gateway keeps its own ``TracerProvider`` rather than installing a global one: two
gateways in one process (tests) do not share spans, and nothing else in the process
starts exporting because llmgw is there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from llmgw.config import TracingConfig
from llmgw.telemetry.tracing import Kind, Span, Tracing

_KINDS = {"internal": SpanKind.INTERNAL, "server": SpanKind.SERVER, "client": SpanKind.CLIENT}


class OTelTracing(Tracing):
    enabled = True

    def __init__(self, config: TracingConfig, exporter: object | None = None) -> None:
        # ParentBased: a caller's sampling decision (its traceparent's flag) wins; the
        # ratio applies to traces that start here.
        self._provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
            resource=Resource.create({"service.name": config.service_name}),
            shutdown_on_exit=False)
        if exporter is None:
            self._provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=config.endpoint)))
        else:  # in-process tests: each span is there as soon as it ends
            assert isinstance(exporter, SpanExporter)
            self._provider.add_span_processor(SimpleSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("llmgw")
        self._propagator = TraceContextTextMapPropagator()

    def span(self, name: str, kind: Kind = "internal") -> AbstractContextManager[Span | None]:
        return self._tracer.start_as_current_span(name, kind=_KINDS[kind])

    def request(self, name: str, headers: Mapping[str, str]
                ) -> AbstractContextManager[Span | None]:
        parent = self._propagator.extract(headers) if "traceparent" in headers else None
        return self._tracer.start_as_current_span(name, context=parent, kind=SpanKind.SERVER)

    def inject(self, headers: dict[str, str]) -> dict[str, str]:
        carrier = dict(headers)
        self._propagator.inject(carrier)
        return carrier

    def end_request(self, span: Span, fields: Mapping[str, object],
                    first_token_ns: int | None) -> None:
        otel_span: Any = span  # the SDK's span: status and events too
        span.set_attributes({f"llmgw.{key}": value for key, value in fields.items()
                             if isinstance(value, str | bool | int | float)})
        status = fields.get("status")
        if isinstance(status, int):
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                otel_span.set_status(Status(StatusCode.ERROR))
        if first_token_ns is not None:
            otel_span.add_event("first_token", timestamp=first_token_ns)

    async def close(self) -> None:
        # Flushing may wait on the collector: off the event loop.
        await asyncio.to_thread(self._provider.shutdown)
