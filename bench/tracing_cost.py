"""The CPU the tracing calls of one request cost, off and on, without HTTP around them.

``bench/overhead.py`` measures whole requests, where a few microseconds drown in the
noise of a shared machine; this replays, in a loop, exactly the calls the request path
makes into ``llmgw.telemetry`` for one non-streamed request (the request, parse, route
and engine spans, their attributes, the traceparent, the outcome), then the OTLP
protobuf encoding of the spans it made (what the exporter's thread does with them).

    python bench/tracing_cost.py [--requests 5000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from llmgw.config import TracingConfig
from llmgw.telemetry import NO_TRACING, Tracing, make_tracing

RECORD = {"request_id": "r-1", "id": "9f2c", "endpoint": "chat", "model": "m",
          "adapter": None, "stream": False, "replica": "m-0", "policy": "least-load",
          "pd_path": None, "prefill_replica": None, "tenant": None, "status": 200,
          "outcome": "ok", "error": None, "prompt_tokens": 5, "completion_tokens": 16,
          "cached_tokens": None, "ttft_ms": None, "latency_ms": 3.2}
DECISION = '{"ranked":["m-0"],"scores":{"least-load":{"m-0":1.0}},"totals":{"m-0":1.0}}'


class Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def one_request(tracing: Tracing) -> None:
    """The calls GenerationRoute, Dispatcher.open and OpenAIHTTPEngine.send make."""
    with tracing.request("llmgw.request", {}) as root:
        with tracing.span("llmgw.parse"):
            pass
        with tracing.span("llmgw.route") as span:
            if span is not None and span.is_recording():
                span.set_attributes({"llmgw.route.policy": "least-load",
                                     "llmgw.route.ranked": ["m-0"],
                                     "llmgw.route.decision": DECISION})
        if tracing.enabled:
            with tracing.span("llmgw.engine", kind="client") as call:
                assert call is not None
                call.set_attributes({"url.full": "http://e:8000/v1/chat/completions",
                                     "http.request.method": "POST"})
                tracing.inject({"content-type": "application/json"})
                call.set_attribute("http.response.status_code", 200)
        if root is not None and root.is_recording():
            tracing.end_request(root, RECORD, None)


def best_us(work: Callable[[], None], requests: int, repeats: int) -> float:
    """The quickest of ``repeats`` runs, in CPU microseconds per request."""
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        for _ in range(requests):
            work()
        best = min(best, (time.process_time() - started) / requests * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    kept = Keep()
    traced = make_tracing(TracingConfig(endpoint="http://127.0.0.1:9/v1/traces"), kept)
    off = best_us(lambda: one_request(NO_TRACING), args.requests, args.repeats)
    on = best_us(lambda: one_request(traced), args.requests, args.repeats)
    spans = kept.spans[: 4 * 512]  # the exporter's default batch: 512 spans

    def encode() -> None:
        for at in range(0, len(spans), 512):
            encode_spans(spans[at:at + 512]).SerializeToString()

    encoding = best_us(encode, 1, args.repeats) / (len(spans) / 4)
    print("| tracing | CPU us per request |\n|---|---|")
    print(f"| off (NO_TRACING) | {off:.2f} |")
    print(f"| on: spans made and ended | {on:.1f} |")
    print(f"| on: OTLP encoding (exporter thread) | {encoding:.1f} |")


if __name__ == "__main__":
    main()
