"""What the gateway tells operators about each request besides metrics: traces
(OpenTelemetry, ``tracing``) and the access log (``access_log``). Both are off by default
and cost the request path nothing then."""

from llmgw.telemetry.access_log import AccessLog
from llmgw.telemetry.tracing import NO_SPAN, NO_TRACING, SPANS, Span, Tracing, make_tracing

__all__ = ["NO_SPAN", "NO_TRACING", "SPANS", "AccessLog", "Span", "Tracing", "make_tracing"]
