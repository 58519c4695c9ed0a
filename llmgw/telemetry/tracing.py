"""The tracing seam: one object, built at start, that every layer holds.

Off (``NO_TRACING``, the default) it is a no-op checked once per site: ``enabled`` is
False, ``span`` hands back one shared context that yields None, and no span, attribute
or header is built. On (``telemetry.tracing`` in the config) ``make_tracing`` imports
OpenTelemetry (the ``tracing`` extra) and returns ``llmgw.telemetry.otel.OTelTracing``;
the gateway runs without the package as long as tracing stays off.

Spans nest through OpenTelemetry's context (a contextvar, so per asyncio task): a span
opened by the API layer is the parent of those the dispatcher, the PD legs and the
engine clients open while it is current, and the engine clients send the current span
as a W3C ``traceparent`` header, so engines that trace (vLLM) join the trace.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from llmgw.config import TracingConfig

AttributeValue = str | bool | int | float | Sequence[str] | Sequence[float]
Kind = Literal["internal", "server", "client"]

# Every span the gateway opens, by name: what it covers.
SPANS = {
    "llmgw.request": "one client request, from its first byte to its last (server span; "
                     "continues the caller's traceparent)",
    "llmgw.parse": "authenticating, reading and validating the body, resolving the model",
    "llmgw.route": "the routing decision: candidates, the chosen replica, every scorer's "
                   "scores; for a disaggregated model the path and both pools' decisions",
    "llmgw.lora.wait": "waiting for the LoRA adapter to be resident on the chosen replica",
    "llmgw.pd.prefill": "a disaggregated request's prefill leg",
    "llmgw.pd.decode": "a disaggregated request's decode leg, until the engine answered",
    "llmgw.engine": "one HTTP request to an engine, until its headers arrived (client span: "
                    "the engine's time to first byte; its traceparent goes to the engine)",
    "llmgw.tool.round": "one round of the server-side tool loop: its hosted tool calls, "
                        "after the model's answer that asked for them (each round's model "
                        "request is its own llmgw.route and llmgw.engine spans)",
}


class Span(Protocol):
    """The part of an OpenTelemetry span the gateway uses."""

    def set_attribute(self, key: str, value: AttributeValue) -> None: ...

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None: ...

    def is_recording(self) -> bool:
        """False for a request the sampler left out: skip computing attributes."""
        ...


class Tracing:
    """No tracing: every method does nothing and allocates nothing. Callers that would
    compute attributes check ``enabled`` (or the span being None) first."""

    enabled: bool = False

    def span(self, name: str, kind: Kind = "internal") -> AbstractContextManager[Span | None]:
        """A child of the current span, current itself inside the ``with``."""
        return NO_SPAN

    def request(self, name: str, headers: Mapping[str, str]
                ) -> AbstractContextManager[Span | None]:
        """The root span of a request, continuing the caller's ``traceparent``."""
        return NO_SPAN

    def inject(self, headers: dict[str, str]) -> dict[str, str]:
        """``headers`` plus the current span's ``traceparent`` (a new dict)."""
        return headers

    def end_request(self, span: Span, fields: Mapping[str, object],
                    first_token_ns: int | None) -> None:
        """Set the request's outcome on its root span: ``fields`` (the access log's
        record), its status and when its first token went out (wall clock, ns)."""
        return None

    async def close(self) -> None:
        """Export what is still buffered, then stop."""
        return None


# What every span of ``NO_TRACING`` is: one shared context that yields None.
NO_SPAN: AbstractContextManager[None] = contextlib.nullcontext()
NO_TRACING = Tracing()


def make_tracing(config: TracingConfig | None, exporter: object | None = None) -> Tracing:
    """The tracing ``config`` asks for. ``exporter``: an OpenTelemetry ``SpanExporter`` to
    use instead of OTLP (tests pass the SDK's ``InMemorySpanExporter``)."""
    if config is None:
        return NO_TRACING
    from llmgw.telemetry.otel import OTelTracing

    return OTelTracing(config, exporter)


def tracing_installed() -> bool:
    """Whether the ``tracing`` extra (the OpenTelemetry SDK and OTLP exporter) is
    importable here: found, not imported."""
    import importlib.util

    try:
        return all(importlib.util.find_spec(name) is not None for name in (
            "opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"))
    except ModuleNotFoundError:  # a parent package is missing
        return False
