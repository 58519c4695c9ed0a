"""vLLM's prefill-decode protocol, driven by the gateway (as vLLM's own disaggregated
proxies do: tests/v1/kv_connector/nixl_integration/toy_proxy_server.py, checked against
vLLM 0.32's NixlConnector scheduler and OpenAI server).

1. Prefill leg: the client's request with ``max_tokens`` (and ``max_completion_tokens``)
   1, not streamed, and ``kv_transfer_params`` asking the prefill engine to keep the KV
   for a remote decode (``do_remote_decode: true``). ``min_tokens`` is dropped: it cannot
   hold with one token. The engine answers with ``kv_transfer_params`` saying where the
   KV is (NixlConnector: ``remote_engine_id``, ``remote_block_ids``, ``remote_host``,
   ``remote_port``, ``remote_request_id``, ``tp_size``, ...).
2. Decode leg: the client's request unchanged, plus the ``kv_transfer_params`` the
   prefill returned, whatever they hold. Dropping them makes the decode engine compute
   the whole prefill again; the gateway never does.

Connectors that share KV through storage keyed by the prompt (ExampleConnector,
LMCache) return no ``kv_transfer_params``: the decode leg then goes without, and its
engine finds the KV by hashing the prompt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from llmgw.engines.request_body import encode

KV_TRANSFER_PARAMS = "kv_transfer_params"
# What a prefill leg asks for: keep the KV for a decode engine that will fetch it.
REMOTE_DECODE: dict[str, Any] = {
    "do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
    "remote_block_ids": None, "remote_host": None, "remote_port": None,
}


def splittable(parsed: Mapping[str, Any]) -> bool:
    """Whether the request maps to one prompt with one output, which is what one
    prefill leg hands to one decode leg. ``n > 1`` and batched completion prompts are
    served aggregated."""
    n = parsed.get("n")
    if isinstance(n, int) and n > 1:
        return False
    prompt = parsed.get("prompt")
    return not (isinstance(prompt, list) and len(prompt) > 1
                and isinstance(prompt[0], str | list))


def prefill_body(parsed: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in parsed.items()
            if k not in ("stream_options", "min_tokens", "min_completion_tokens")}
    body.update(stream=False, max_tokens=1, kv_transfer_params=dict(REMOTE_DECODE))
    if "max_completion_tokens" in body:
        body["max_completion_tokens"] = 1
    return encode(body)


def transfer_params(prefill_answer: bytes) -> dict[str, Any] | None:
    """The ``kv_transfer_params`` of a prefill leg's (non-streamed) answer, if any."""
    try:
        params = orjson.loads(prefill_answer).get(KV_TRANSFER_PARAMS)
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return params if isinstance(params, dict) and params else None


def decode_body(parsed: Mapping[str, Any], params: Mapping[str, Any] | None) -> bytes:
    """The decode leg: the request as the client sent it (never a client's own
    ``kv_transfer_params``), with the prefill's params when it returned some."""
    body = {k: v for k, v in parsed.items() if k != KV_TRANSFER_PARAMS}
    if params:
        body[KV_TRANSFER_PARAMS] = dict(params)
    return encode(body)
