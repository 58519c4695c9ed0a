"""Serving one chat or completion request on a simulated replica, streamed or not.

The response head goes out when the first token exists (after queueing and prefill), so
it can carry the simulated timings as ``x-sim-*`` headers; the final usage chunk or body
carries them too, in a ``sim`` field, with the true ``cached_tokens`` in ``usage``.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict
from typing import Any

import orjson

from bench.fleet_sim.http_server import Responder
from bench.fleet_sim.openai_format import Reply, error_body, reply_pieces, usage
from bench.fleet_sim.replica import Prefill, SimReplica
from bench.fleet_sim.tokens import render_body
from bench.http11 import Request

_ids = itertools.count(1)


class BadRequest(Exception):
    """The body is not a generation request this simulator reads."""


def _read(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("body is not JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    return data


def _max_tokens(data: dict[str, Any]) -> int:
    value = data.get("max_completion_tokens") or data.get("max_tokens") or 16
    if not isinstance(value, int) or value < 1:
        raise BadRequest("max_tokens must be a positive integer")
    return value


def adapter_of(named: str, base: str) -> str | None:
    """The LoRA adapter a request's ``model`` names: any name but the base model's (as
    vLLM with a LoRA resolver, every name is an adapter it can load)."""
    return None if named == base else named


def sim_fields(replica: SimReplica, pf: Prefill) -> dict[str, Any]:
    fields = {k: round(v, 3) for k, v in asdict(pf).items()}
    ttft = pf.queue_ms + pf.lane_ms + pf.load_ms + pf.prefill_ms
    return {"replica": replica.name, **fields, "ttft_ms": round(ttft, 3)}


def sim_headers(sim: dict[str, Any]) -> dict[str, str]:
    return {"x-sim-replica": sim["replica"], "x-sim-queue-ms": f"{sim['queue_ms']:.3f}",
            "x-sim-lane-ms": f"{sim['lane_ms']:.3f}",
            "x-sim-prefill-ms": f"{sim['prefill_ms']:.3f}",
            "x-sim-cached-tokens": str(sim["cached_tokens"]),
            "x-sim-prompt-tokens": str(sim["prompt_tokens"])}


async def serve_generation(replica: SimReplica, model: str, request: Request,
                           resp: Responder) -> None:
    try:
        data = _read(request.body)
        n = _max_tokens(data)
    except BadRequest as exc:
        resp.send(400, error_body(str(exc)))
        return
    chat = request.path == "/v1/chat/completions"
    prompt = render_body(data)
    stream = bool(data.get("stream"))
    wants_usage = bool((data.get("stream_options") or {}).get("include_usage"))
    key = next(_ids)
    named = str(data.get("model") or model)
    adapter = adapter_of(named, model)
    reply = Reply.new(f"sim-{key}", named, chat, replica.name)
    pieces = reply_pieces(prompt, n)
    generated, completed = 0, False
    try:
        # The adapter first: a batch slot is not held while waiting for an adapter slot.
        async with replica.adapter(adapter) as load_ms, replica.slot() as queue_ms:
            pf = await replica.prefill(prompt, queue_ms, key, adapter, load_ms)
            sim = sim_fields(replica, pf)
            if stream:
                resp.start(200, "text/event-stream", sim_headers(sim))
                resp.chunk(reply.event(pieces[0], first=True))
            generated = 1
            for piece in pieces[1:]:
                await replica.next_step(key)
                generated += 1
                if stream:
                    resp.chunk(reply.event(piece))
            completed = True
    finally:
        replica.finish(key, prompt + "".join(pieces[:generated]), generated, completed, adapter)
    counts = usage(pf.prompt_tokens, n, pf.cached_tokens)
    if stream:
        _end_stream(resp, reply, counts, sim, wants_usage)
    else:
        resp.send(200, reply.full("".join(pieces), "length", counts, sim), headers=sim_headers(sim))


def _end_stream(resp: Responder, reply: Reply, counts: dict[str, Any], sim: dict[str, Any],
                wants_usage: bool) -> None:
    resp.chunk(reply.event(None, "length"))
    if wants_usage:
        resp.chunk(reply.usage_event(counts, sim))
    resp.chunk(b"data: [DONE]\n\n")
    resp.end()
