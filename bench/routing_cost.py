"""What one routing decision costs: rank + on_routed of the built-in policies with many
replicas and a full prefix index. Pure Python, no I/O: the number is CPU per request.

    python bench/routing_cost.py [--replicas 64] [--prefixes 100000] [--requests 20000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from llmgw.routing.kv_block_index import KVBlockIndex, StoredBlocks
from llmgw.routing.registry import make_policy
from llmgw.types import ReplicaView, RequestContext


def prompts(rng: random.Random, count: int) -> list[str]:
    """Agent-like traffic: 50 long shared system prompts, a varying user turn; 500
    sessions of about ten turns each."""
    systems = [f"system prompt {s}: " + "tools and rules " * 120 for s in range(50)]
    return [rng.choice(systems) + f"user question {rng.randrange(10**9)}" for _ in range(count)]


KV_BLOCK = 16  # vLLM's default block size on GPUs


def tokens_of(prompt: str) -> list[int]:
    """Stand-in token ids (about 4 characters per token): the tokenizer's own cost is
    measured apart, this is the routing decision given the ids."""
    return [hash(prompt[i:i + 4]) & 0xFFFF for i in range(0, len(prompt), 4)]


def fill_kv_index(index: KVBlockIndex, rng: random.Random, replicas: int,
                  blocks: int) -> None:
    """Engine-reported blocks, as KV events would deliver them, until `blocks` are held."""
    held = 0
    for i, prompt in enumerate(prompts(rng, blocks)):
        tokens = tokens_of(prompt + str(i))
        full = len(tokens) // KV_BLOCK
        index.stored(f"r{i % replicas}", StoredBlocks(
            block_hashes=[(i, b) for b in range(full)], parent_block_hash=None,
            token_ids=tokens[:full * KV_BLOCK], block_size=KV_BLOCK))
        held += full
        if held >= blocks:
            return


def run(policy_name: str, replicas: int, prefixes: int, requests: int) -> dict[str, float]:
    rng = random.Random(0)
    kv_index = KVBlockIndex()
    policy = make_policy(policy_name, random.Random(1), kv_index=kv_index)
    views = [ReplicaView(id=f"r{i}", model="m", in_flight=rng.randrange(4))
             for i in range(replicas)]
    # Fill the index: distinct prompts spread over the replicas until `prefixes` are held.
    for i, prompt in enumerate(prompts(rng, prefixes // 20)):
        ctx = RequestContext(request_id=f"w{i}", model="m", endpoint="chat", stream=False,
                             prompt=prompt + str(i), session_id=f"s{i}")
        policy.on_routed(ctx, views[i % replicas].id)
    if "tokens" in policy.needs:
        fill_kv_index(kv_index, rng, replicas, prefixes)
    samples = []
    for i, prompt in enumerate(prompts(rng, requests)):
        ctx = RequestContext(request_id=f"q{i}", model="m", endpoint="chat", stream=False,
                             prompt=prompt, session_id=f"s{i % 500}",
                             prompt_tokens=tokens_of(prompt) if "tokens" in policy.needs
                             else None)
        started = time.perf_counter()
        chosen = policy.rank(ctx, views)[0]
        policy.on_routed(ctx, chosen.id)
        samples.append(time.perf_counter() - started)
    samples.sort()
    return {"p50_us": samples[len(samples) // 2] * 1e6,
            "p99_us": samples[int(len(samples) * 0.99)] * 1e6,
            "mean_us": statistics.fmean(samples) * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--replicas", type=int, default=64)
    parser.add_argument("--prefixes", type=int, default=100_000,
                        help="remembered prompts spread over the replicas")
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    print(f"{args.replicas} replicas, {args.prefixes} remembered prefixes, "
          f"{args.requests} decisions per policy (prompts ~2 kB)")
    print("| policy | p50 µs | p99 µs | mean µs |\n|---|---|---|---|")
    for name in ("round-robin", "least-load", "prefix-aware", "session-aware",
                 "precise-prefix-aware"):
        r = run(name, args.replicas, args.prefixes, args.requests)
        print(f"| {name} | {r['p50_us']:.1f} | {r['p99_us']:.1f} | {r['mean_us']:.1f} |")


if __name__ == "__main__":
    main()
