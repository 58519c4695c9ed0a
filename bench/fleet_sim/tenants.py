"""The independent workload: tenants x sessions, sized against the fleet's KV cache.

Nobody tuned a policy for it (issue 15). A few tenants, each with one long system prompt
that all its sessions share; many multi-turn sessions per tenant, each resending its
growing history. Tenants are unequally popular (weights 1, 1/2, 1/3, ...), user turns and
replies are mixed: mostly short, sometimes a pasted document or a long answer. Seeded:
the same ``(count, seed, tenants)`` always gives the same sessions.

:func:`working_set_tokens` is what the fleet would have to hold to keep every prefix at
once (each tenant's system prompt once, each session's final history beyond it); the
matrix sizes each replica's KV cache as that over ``factor x replicas`` (``kv_blocks``).
"""

from __future__ import annotations

import math
import random

from bench.fleet_sim.tokens import render_chat, token_count
from bench.fleet_sim.workloads import Message, Session, Step, Text, Workload

NAME = "tenants"


def _sized(rng: random.Random, short: tuple[int, int], long: tuple[int, int],
           long_share: float) -> int:
    low, high = long if rng.random() < long_share else short
    return rng.randint(low, high)


def tenants(count: int, seed: int, tenants: int = 4) -> Workload:
    """``count`` requests in sessions of 2-8 turns over ``tenants`` tenants whose system
    prompts are 1-2.5k tokens. User turns are 20-150 tokens, 1 in 10 a 400-1200-token
    document; replies 20-120 tokens, 1 in 5 150-300."""
    rng = random.Random(seed)
    text = Text(rng)
    systems = [{"role": "system", "content": f"You are tenant {t}'s assistant. "
                + text.tokens(rng.randint(1000, 2500))} for t in range(tenants)]
    popularity = [1 / (t + 1) for t in range(tenants)]
    sessions: list[Session] = []
    total = 0
    while total < count:
        turns = min(rng.randint(2, 8), count - total)
        steps = tuple(Step(({"role": "user", "content": text.tokens(
            _sized(rng, (20, 150), (400, 1200), 0.1))},), _sized(rng, (20, 120), (150, 300), 0.2))
            for _ in range(turns))
        system = rng.choices(systems, weights=popularity)[0]
        sessions.append(Session(f"{NAME}-{seed}-{len(sessions)}", (system,), steps))
        total += turns
    return Workload(NAME, tuple(sessions))


def working_set_tokens(workload: Workload) -> int:
    """Distinct tokens the workload's prefixes need at once: every distinct opening once,
    plus each session's last prompt and reply beyond its opening. Replies are counted at
    ``max_tokens`` (the sims always generate that many)."""
    openings: dict[tuple[str | None, str], int] = {}  # cached once per LoRA adapter
    total = 0
    for session in workload.sessions:
        text = render_chat(list(session.opening))[: -len("<|assistant|>")]
        opening = (session.adapter, text)
        openings[opening] = token_count(text)
        messages: list[Message] = list(session.opening)
        for step in session.steps:
            reply = {"role": "assistant", "content": "x" * 4 * step.max_tokens}
            messages += [*step.messages, reply]
        total += token_count(render_chat(messages)) - openings[opening]
    return total + sum(openings.values())


def kv_blocks(workload: Workload, factor: float, replicas: int, block_tokens: int) -> int:
    """Blocks per replica so that the working set is ``factor`` x the fleet's KV."""
    return max(8, math.ceil(working_set_tokens(workload) / (factor * replicas * block_tokens)))
