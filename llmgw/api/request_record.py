"""What one finished request leaves behind besides metrics: its access log line and its
root span's attributes, from the same record.

The record holds ids, names, numbers and times: never the body, the prompt, the answer
or the API key itself (only the key's configured name).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from llmgw.errors import GatewayError
from llmgw.exchange import Exchange
from llmgw.tenancy.estimate import used_tokens
from llmgw.types import Outcome


def request_record(*, request_id: str, gateway_id: str, endpoint: str, model: str,
                   status: int, outcome: Outcome, error: GatewayError | None,
                   tenant: str | None, started: float,
                   exchange: Exchange | None) -> dict[str, Any]:
    """``started``: when the request arrived (``time.perf_counter``). Every key is always
    there, null when it does not apply (no engine ran it, not disaggregated, no auth)."""
    now = time.perf_counter()
    usage = exchange.usage if exchange is not None else None
    prompt, completion = used_tokens(usage)
    first = exchange.first_chunk_at if exchange is not None else None
    return {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        # The id the client got in x-request-id (its own when it sent one), and the
        # gateway's own, which the engine request carries.
        "request_id": request_id,
        "id": gateway_id,
        "endpoint": endpoint,
        "model": model or None,
        "adapter": exchange.ctx.adapter if exchange is not None else None,
        "stream": exchange.ctx.stream if exchange is not None else None,
        "replica": exchange.replica.id if exchange is not None else None,
        "policy": exchange.group.policy_name if exchange is not None else None,
        "pd_path": exchange.pd_path if exchange is not None else None,
        "prefill_replica": exchange.prefill_replica if exchange is not None else None,
        "tenant": tenant,
        "status": status,
        # The request path files every error before the engine answered under
        # upstream_error; here a 4xx reads as what it is.
        "outcome": "client_error" if outcome == "upstream_error" and 400 <= status < 500
        else outcome,
        "error": (error.code or error.type) if error is not None else None,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cached_tokens": _cached_tokens(usage),
        "ttft_ms": None if first is None else round((first - started) * 1000, 3),
        "latency_ms": round((now - started) * 1000, 3),
    }


def first_token_ns(exchange: Exchange | None) -> int | None:
    """When the first token went out, on the wall clock spans use (ns since the epoch)."""
    if exchange is None or exchange.first_chunk_at is None:
        return None
    return time.time_ns() - int((time.perf_counter() - exchange.first_chunk_at) * 1e9)


def _cached_tokens(usage: Mapping[str, Any] | None) -> int | None:
    details = usage.get("prompt_tokens_details") if usage else None
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return cached if isinstance(cached, int) else None
