"""Gateway CPU per routed request by prompt size, stage by stage (issue 15, point 6).

    python -m bench.routing_stages [--sizes 1,4,16,64] [--replicas 8] [--requests 2000]

A multi-turn chat (one shared system prompt, a history that grows turn by turn) sent as
an OpenAI body of about 1, 4, 16 and 64 KB. Each stage is what the gateway does per
request before the engine sees it, timed on its own in process (pure CPU, no I/O):
parsing the JSON body, validating it, rendering the prompt text, the session key (a
header, or the fingerprint of a body without one), the token estimate for limits,
hashing the prompt's blocks, and the whole routing decision (``rank`` + ``on_routed``)
of prefix-aware and session-aware over a warm index, each request right after its
session's previous turn (the same history without the last exchange). Prints a table of
µs per request and µs per KB of prompt.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson

from llmgw.api.generation import validate
from llmgw.protocol import prompt_text
from llmgw.routing.prefix_cache import PrefixParams
from llmgw.routing.prefix_index import block_hashes
from llmgw.routing.registry import make_policy
from llmgw.routing.session import session_key
from llmgw.tenancy.estimate import estimate_tokens
from llmgw.types import ReplicaView, RequestContext

WORDS = (
    "the",
    "replica",
    "cache",
    "prefix",
    "session",
    "token",
    "route",
    "block",
    "engine",
    "model",
    "request",
    "answer",
    "history",
    "tool",
    "result",
    "json",
)


def text(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    size = 0
    while size < chars:
        word = rng.choice(WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[:chars]


def chat_body(rng: random.Random, system: str, kb: int, session: int) -> dict[str, Any]:
    """A chat whose system prompt plus history is about ``kb`` KB: turns of ~600
    characters (user) and ~900 (assistant)."""
    messages = [{"role": "system", "content": system}]
    size = len(system)
    while size < kb * 1024:
        role = "user" if len(messages) % 2 else "assistant"
        turn = text(rng, 600 if role == "user" else 900)
        messages.append({"role": role, "content": turn})
        size += len(turn)
    if messages[-1]["role"] != "user":
        messages.append({"role": "user", "content": text(rng, 200)})
    return {
        "model": "m",
        "messages": messages,
        "stream": True,
        "max_tokens": 64,
        "user": f"session-{session}",
    }


def timed(samples: list[float], fn: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = fn()
    samples.append(time.perf_counter() - started)
    return result


def median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


STAGES = (
    "parse JSON",
    "validate",
    "prompt text",
    "session key (header)",
    "session key (fingerprint)",
    "token estimate",
    "block hashes",
    "prefix-aware decision",
    "session-aware decision",
)


def measure(kb: int, replicas: int, requests: int) -> dict[str, float]:
    """Median µs per request of each stage at prompts of about ``kb`` KB."""
    rng = random.Random(kb)
    system = text(rng, 1024)
    bodies = [orjson.dumps(chat_body(rng, system, kb, i)) for i in range(32)]
    views = [
        ReplicaView(id=f"r{i}", model="m", in_flight=rng.randrange(4)) for i in range(replicas)
    ]
    policies = {
        name: make_policy(name, random.Random(1)) for name in ("prefix-aware", "session-aware")
    }
    block = PrefixParams()
    samples: dict[str, list[float]] = {stage: [] for stage in STAGES}
    headers = {"x-session-id": "s"}
    for i in range(requests):
        raw = bodies[i % len(bodies)]
        parsed = timed(samples["parse JSON"], lambda raw=raw: orjson.loads(raw))
        timed(samples["validate"], lambda parsed=parsed: validate(parsed, "chat"))
        prompt = timed(samples["prompt text"], lambda parsed=parsed: prompt_text(parsed))
        timed(samples["session key (header)"], lambda parsed=parsed: session_key(headers, parsed))
        no_user = {k: v for k, v in parsed.items() if k != "user"}
        timed(samples["session key (fingerprint)"], lambda body=no_user: session_key({}, body))
        timed(samples["token estimate"], lambda parsed=parsed: estimate_tokens(parsed))
        timed(
            samples["block hashes"],
            lambda prompt=prompt: block_hashes(prompt, block.block_chars, block.max_blocks),
        )
        # The session's previous turn (its history without the last exchange) is routed
        # first, untimed: a conversation's turns grow, so each resends the one before.
        earlier = prompt_text({"messages": parsed["messages"][:-2]})
        for name, policy in policies.items():
            # prefix-aware keys no sessions: the gateway computes no session key for it.
            session = f"s{i}" if name == "session-aware" else None

            def route(text: str, rid: str, policy: Any = policy, session: Any = session) -> None:
                ctx = RequestContext(
                    request_id=rid,
                    model="m",
                    endpoint="chat",
                    stream=True,
                    prompt=text,
                    session_id=session,
                )
                policy.on_routed(ctx, policy.rank(ctx, views)[0].id)

            route(earlier, f"p{i}")
            timed(samples[f"{name} decision"], lambda r=route, t=prompt, q=f"q{i}": r(t, q))
    return {stage: median_us(values) for stage, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1,4,16,64", help="prompt sizes in KB")
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000, help="per size")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {kb: measure(kb, args.replicas, args.requests) for kb in sizes}
    head = " | ".join(f"{kb} KB" for kb in sizes)
    print(
        f"{args.replicas} replicas, {args.requests} requests per size; median µs per "
        "request (µs per KB in brackets)\n"
    )
    print(f"| stage | {head} |\n|---|{'---|' * len(sizes)}")
    for stage in STAGES:
        cells = " | ".join(
            f"{results[kb][stage]:.1f} ({results[kb][stage] / kb:.2f})" for kb in sizes
        )
        print(f"| {stage} | {cells} |")


if __name__ == "__main__":
    main()
