"""Invariants of the cache- and session-aware policies: stickiness, bounded memory, the
load guard taking over, bounded load, replica removal moving few sessions."""

from __future__ import annotations

import random
from collections import Counter
from hashlib import blake2b

import pytest

from llmgw.config import ConfigError, GatewayConfig
from llmgw.routing.affinity import matched_depths
from llmgw.routing.base import LoadGuard
from llmgw.routing.prefix_cache import PrefixCacheScorer, PrefixParams
from llmgw.routing.prefix_index import HistoryHashes, PrefixIndex, block_hashes
from llmgw.routing.registry import make_policy
from llmgw.routing.session import SessionScorer, pick_for_session, session_key
from llmgw.types import ReplicaView, RequestContext


def views(*loads: int) -> list[ReplicaView]:
    return [ReplicaView(id=f"r{i}", model="m", in_flight=load) for i, load in enumerate(loads)]


def ctx(prompt: str = "", session: str | None = None, rid: str = "q") -> RequestContext:
    return RequestContext(request_id=rid, model="m", endpoint="chat", stream=False,
                          prompt=prompt, session_id=session)


SYSTEM = "You are a careful assistant. " * 40  # ~1200 chars: many 64-char blocks


def test_block_hashes_chain_so_equal_blocks_after_different_prefixes_differ() -> None:
    a = block_hashes("x" * 64 + "y" * 64, 64, 10)
    b = block_hashes("z" * 64 + "y" * 64, 64, 10)
    assert len(a) == 2 and a[1] != b[1]
    assert block_hashes("x" * 63, 64, 10) == []  # only full blocks
    assert len(block_hashes("x" * 6400, 64, 10)) == 10  # bounded per request


def test_prefix_index_is_bounded_per_replica_and_forgets_old_entries() -> None:
    now = [0.0]
    index = PrefixIndex(capacity_per_replica=5, ttl_s=10, clock=lambda: now[0])
    index.insert("a", list(range(8)))
    index.insert("b", [0, 1])
    # The tail goes first (as the engine evicts): what a replica holds stays a prefix.
    assert index.size("a") == 5 and index.matched(list(range(8)), ["a", "b"]) == {
        "a": 5, "b": 2}
    assert index.matched([5, 6, 7], ["a", "b"]) == {"a": 0, "b": 0}
    assert index.matched([0, 1, 2], ["a", "b", "c"]) == {"a": 3, "b": 2, "c": 0}
    now[0] = 11.0
    index.insert("a", [42])  # expiry happens on insert
    assert index.size("a") == 1 and index.blocks() == 3  # 42 on a; 0 and 1 on b
    index.retain({"a"})
    assert index.blocks() == 1 and index.matched([0], ["b"]) == {"b": 0}


def test_matched_follows_each_replica_down_the_chain() -> None:
    index = PrefixIndex(100, 60, clock=lambda: 0.0)
    index.insert("deep", [1, 2, 3, 4])
    index.insert("shallow", [1, 2])
    index.insert("other", [9])
    assert index.matched([1, 2, 3, 4, 5], ["deep", "shallow", "other", "new"]) == {
        "deep": 4, "shallow": 2, "other": 0, "new": 0}


def test_prefix_policy_sends_a_shared_prefix_back_to_the_same_replica() -> None:
    policy = make_policy("prefix-aware", random.Random(0))
    replicas = views(0, 0, 0, 0)
    first = policy.rank(ctx(SYSTEM + "question one", rid="1"), replicas)[0].id
    policy.on_routed(ctx(SYSTEM + "question one", rid="1"), first)
    for i in range(2, 10):
        request = ctx(SYSTEM + f"question {i}", rid=str(i))
        chosen = policy.rank(request, replicas)[0].id
        policy.on_routed(request, chosen)
        assert chosen == first


def test_a_cache_miss_goes_to_the_least_loaded_replica() -> None:
    policy = make_policy("prefix-aware", random.Random(0))
    request = ctx(SYSTEM, rid="1")
    policy.on_routed(request, "r0")
    # r3 has the smallest memory (none) but is busiest: a miss must not pick it.
    miss = ctx("a completely different prompt " * 20, rid="2")
    assert policy.rank(miss, views(2, 1, 0, 3))[0].id == "r2"


def test_load_guard_overrules_affinity_when_imbalanced() -> None:
    policy = make_policy("prefix-aware", random.Random(0))
    policy.on_routed(ctx(SYSTEM, rid="1"), "r0")
    hot = ctx(SYSTEM + "again", rid="2")
    assert policy.rank(hot, views(3, 0, 0))[0].id == "r0"  # affinity wins: not imbalanced
    decision = policy.explain(hot, views(20, 0, 1))
    assert decision.ranked[0].id == "r1" and decision.guard is not None
    assert LoadGuard(8, 1.5).tripped(views(9, 0)) and not LoadGuard(8, 1.5).tripped(views(8, 0))


def test_explanation_lists_each_scorer_and_the_totals() -> None:
    policy = make_policy("prefix-aware", random.Random(0))
    policy.on_routed(ctx(SYSTEM, rid="1"), "r1")
    decision = policy.explain(ctx(SYSTEM, rid="2"), views(0, 0)).as_dict()
    assert decision["ranked"] == ["r1", "r0"]
    assert decision["scores"] == {"prefix-cache": {"r0": 0.0, "r1": 1.0},
                                  "least-load": {"r0": 1.0, "r1": 1.0}}
    assert decision["totals"] == {"r0": 1.0, "r1": 3.0} and decision["guard"] is None


def test_prefix_scorer_memory_is_bounded_per_replica() -> None:
    scorer = PrefixCacheScorer(PrefixParams(block_chars=8, capacity_per_replica=100))
    for i in range(1000):
        request = ctx(f"unique prompt number {i:06d} " * 4, rid=str(i))
        scorer.score(request, views(0))
        scorer.on_routed(request, "r0")
    assert scorer.index.size("r0") == 100
    assert len(scorer._pending) == 0  # nothing left behind per request


def test_session_sticks_and_spills_only_when_its_replica_is_overloaded() -> None:
    replicas = views(0, 0, 0, 0)
    home = pick_for_session("s-42", replicas, 1.5).id
    assert all(pick_for_session("s-42", replicas, 1.5).id == home for _ in range(5))
    loaded = [ReplicaView(id=r.id, model="m", in_flight=10 if r.id == home else 1)
              for r in replicas]
    assert pick_for_session("s-42", loaded, 1.5).id != home


def test_removing_a_replica_moves_only_its_sessions_and_adding_one_about_1_over_n() -> None:
    keys = [f"session-{i}" for i in range(2000)]
    eight = views(*[0] * 8)
    before = {k: pick_for_session(k, eight, 1.5).id for k in keys}
    seven = [r for r in eight if r.id != "r3"]
    after = {k: pick_for_session(k, seven, 1.5).id for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(before[k] == "r3" for k in moved)
    nine = [*eight, ReplicaView(id="r8", model="m")]
    grown = sum(before[k] != pick_for_session(k, nine, 1.5).id for k in keys)
    assert 0.07 < grown / len(keys) < 0.16  # ~1/9
    spread = Counter(before.values())
    assert max(spread.values()) / min(spread.values()) < 1.4


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({"x-session-id": "abc"}, {"user": "u"}, ("h", "abc")),
        ({"x-claude-code-session-id": "cc"}, {}, ("h", "cc")),
        ({}, {"prompt_cache_key": "k", "user": "u"}, ("p", "k")),
        ({}, {"user": "u"}, ("u", "u")),
        ({}, {"prompt": "no messages"}, None),
    ],
    ids=["header", "agent-header", "prompt-cache-key", "user", "nothing"],
)
def test_session_key_sources(headers: dict[str, str], body: dict[str, object],
                             expected: tuple[str, str] | None) -> None:
    # Keys are digests of what named the session, tagged with where it came from.
    assert session_key(headers, body) == (None if expected is None else f"{expected[0]}:"
                                          + blake2b(expected[1].encode(), digest_size=16)
                                          .hexdigest())


def test_agents_without_a_key_get_a_stable_fingerprint() -> None:
    turn1 = {"messages": [{"role": "system", "content": "agent"},
                          {"role": "user", "content": "task"}], "tools": [{"name": "t"}]}
    turn2 = {**turn1, "messages": [*turn1["messages"],  # type: ignore[misc]
                                   {"role": "assistant", "content": "..."},
                                   {"role": "user", "content": "next"}]}
    other = {**turn1, "tools": [{"name": "other"}]}
    assert session_key({}, turn1) == session_key({}, turn2) != session_key({}, other)
    assert str(session_key({}, turn1)).startswith("f:")


def test_session_scorer_gives_no_opinion_without_a_session() -> None:
    assert SessionScorer().score(ctx(), views(0, 0)) == {}


@pytest.mark.parametrize(
    ("policies", "message"),
    [
        ({"p": {"scorers": [{"type": "nope"}]}},
         "policies.p.scorers[0].type: unknown 'nope'; known: kv-cache, least-load, "
         "lora-affinity, prefix-cache, session"),
        ({"p": {"scorers": [{"type": "prefix-cache", "params": {"block_chars": 2}}]}},
         "policies.p.scorers[0].params.block_chars: Input should be greater than or equal to 8"),
        ({"p": {"filters": [{"type": "has-capacity"}], "scorers": [{"type": "least-load"}]}},
         "policies.p.filters[0].params.max_load: Field required"),
    ],
    ids=["unknown-scorer", "bad-param", "missing-param"],
)
def test_bad_policy_config_names_the_yaml_path(policies: dict[str, object], message: str) -> None:
    cfg = GatewayConfig.model_validate({"policies": policies, "models": [
        {"name": "m", "model": "x", "routing": "p"}]})
    with pytest.raises(ConfigError) as info:
        make_policy("p", random.Random(0), cfg.policies)
    assert str(info.value) == message


def test_prediction_is_the_chosen_replicas_score_taken_once_and_bounded() -> None:
    policy = make_policy("prefix-aware", random.Random(0))
    policy.on_routed(ctx(SYSTEM, rid="1"), "r1")
    request = ctx(SYSTEM + "more", rid="2")
    chosen = policy.rank(request, views(0, 0))[0].id
    policy.on_routed(request, chosen)
    assert chosen == "r1"
    predicted = policy.take_prediction(request)
    assert predicted is not None and 0.9 < predicted <= 1.0
    assert policy.take_prediction(request) is None
    for i in range(10_000):  # routed but never finished: memory stays bounded
        lost = ctx(f"prompt {i} " * 30, rid=f"lost{i}")
        policy.rank(lost, views(0, 0))
        policy.on_routed(lost, "r0")
    scorer = policy.scorers[0][0]  # type: ignore[attr-defined]
    ledger = scorer._predictions
    assert len(ledger._predicted) <= 4096 and len(ledger._offered) <= 4096


def test_a_prefix_every_replica_holds_does_not_hide_the_one_with_the_history() -> None:
    scorer = PrefixCacheScorer(PrefixParams(block_chars=8))
    shared = "S" * 80  # 10 blocks on every replica
    for rid in ("r0", "r1", "r2"):
        scorer.on_routed(ctx(shared, rid=f"warm-{rid}"), rid)
    history = shared + "turn one and its answer " * 2
    scorer.on_routed(ctx(history, rid="h"), "r2")
    request = ctx(history + "next question", rid="q")
    scores = scorer.score(request, views(0, 0, 0))
    assert scores["r0"] == scores["r1"] == 0.0 and scores["r2"] > 0.75


def test_lora_affinity_prefers_resident_then_free_slots() -> None:
    from llmgw.routing.lora_affinity import HasAdapterFilter, LoraAffinityScorer

    replicas = [ReplicaView(id="full", model="m", adapters=frozenset({"a", "b"}), max_adapters=2),
                ReplicaView(id="free", model="m", adapters=frozenset({"a"}), max_adapters=2),
                ReplicaView(id="has", model="m", adapters=frozenset({"sql"}), max_adapters=1)]
    request = RequestContext(request_id="x", model="m", endpoint="chat", stream=False,
                             adapter="sql")
    assert LoraAffinityScorer().score(request, replicas) == {"full": 0.0, "free": 0.5,
                                                              "has": 1.0}
    assert [r.id for r in HasAdapterFilter().filter(request, replicas)] == ["has"]
    cold = RequestContext(request_id="y", model="m", endpoint="chat", stream=False,
                          adapter="new")
    assert len(HasAdapterFilter().filter(cold, replicas)) == 3
    assert LoraAffinityScorer().score(ctx(), replicas) == {}


def test_prefix_memory_follows_the_engines_kv_capacity() -> None:
    scorer = PrefixCacheScorer(PrefixParams(block_chars=8, chars_per_token=4.0))
    small = [ReplicaView(id="r0", model="m", kv_capacity_tokens=20)]  # 20 x 4 / 8 = 10 blocks
    for i in range(50):
        request = ctx(f"prompt number {i:04d} padded out " * 3, rid=str(i))
        scorer.score(request, small)
        scorer.on_routed(request, "r0")
    assert scorer.index.size("r0") == 10
    grown = [ReplicaView(id="r0", model="m", kv_capacity_tokens=200)]  # 100 blocks
    for i in range(50):
        request = ctx(f"another prompt {i:04d} padded out " * 3, rid=f"g{i}")
        scorer.score(request, grown)
        scorer.on_routed(request, "r0")
    assert scorer.index.size("r0") == 100


def test_index_size_follows_the_learned_characters_per_token() -> None:
    """The engine's KV size is in tokens, the index's in characters: the ratio is learned
    from the engines' usage.prompt_tokens, and the index resized when it drifts."""
    policy = make_policy("prefix-aware", random.Random(0))
    scorer = policy.scorers[0][0]  # type: ignore[attr-defined]
    replica = ReplicaView(id="r0", model="m", kv_capacity_tokens=128_000)
    policy.rank(ctx(SYSTEM), [replica])
    assert scorer.index._capacity["r0"] == 128_000 * 4 // 128  # the configured 4.0 at first
    for i in range(15):  # a language/tokenizer with 2 characters per token
        policy.on_done(ctx("x" * 200, rid=f"d{i}"), "r0", "ok", prompt_tokens=100)
    assert scorer.index._capacity["r0"] == 4000  # too few samples to act on yet
    policy.on_done(ctx("x" * 200, rid="d15"), "r0", "ok", prompt_tokens=100)
    assert scorer.chars_per_token == pytest.approx(2.0)
    assert scorer.index._capacity["r0"] == 2000
    policy.on_done(ctx("", rid="none"), "r0", "ok", prompt_tokens=100)  # no prompt: no sample
    assert scorer.chars_per_token == pytest.approx(2.0)


@pytest.mark.parametrize("seed", range(20))
def test_bisected_depths_equal_a_walk_on_what_the_index_holds(seed: int) -> None:
    """The index's lookup bisects on its prefix-closed holdings; a block-by-block walk
    (the engine-report index's way) must give the same depths, evictions included."""
    rng = random.Random(seed)
    index = PrefixIndex(capacity_per_replica=rng.randrange(4, 40), ttl_s=60,
                        clock=lambda: 0.0)
    chains = [[rng.randrange(3) for _ in range(rng.randrange(1, 30))] for _ in range(12)]
    as_hashes = [[hash(tuple(c[:i + 1])) for i in range(len(c))] for c in chains]
    replicas = ["a", "b", "c", "d"]
    for hashes in rng.choices(as_hashes, k=40):
        index.insert(rng.choice(replicas), hashes)
    for hashes in as_hashes:
        assert index.matched(hashes, replicas) == matched_depths(
            hashes, index._holders, replicas)


def test_a_session_rehashes_only_what_its_history_added() -> None:
    history = HistoryHashes(max_chars=100)
    turn1, turn2 = "a" * 40 + "b" * 25, "a" * 40 + "b" * 25 + "c" * 30
    assert history.hashes("s", turn1, 8, 50) == block_hashes(turn1, 8, 50)
    # The resent history is taken as it was hashed; only the 4 new blocks are hashed.
    grown = history.hashes("s", turn2, 8, 50)
    assert grown == block_hashes(turn2, 8, 50) and len(grown) == 11
    # A prompt that does not start with the session's last one is hashed afresh.
    edited = "x" + turn2[1:]
    assert history.hashes("s", edited, 8, 50) == block_hashes(edited, 8, 50)
    assert history.hashes("t", turn1, 8, 5) == block_hashes(turn1, 8, 5)  # the horizon holds
    history.hashes("u", "z" * 64, 8, 50)  # 88 + 40 + 64 characters: the oldest leave
    assert [key for key in history._entries] == ["u"]


@pytest.mark.parametrize("session", [None, "s1"])
def test_a_prefix_cached_under_one_adapter_is_no_hit_for_another(session: str | None) -> None:
    """Engines key KV blocks by adapter (vLLM): the same prompt under another adapter, or
    under the base model, finds nothing cached where the first one ran."""
    scorer = PrefixCacheScorer(PrefixParams(block_chars=8))
    prompt = SYSTEM + "the question"
    first = ctx(prompt, session, rid="a")._replace(adapter="sql")
    scorer.score(first, views(0, 0))
    scorer.on_routed(first, "r0")
    for rid, adapter in (("b", "chat"), ("c", None), ("d", "sql")):
        other = ctx(prompt + " and more", session, rid=rid)._replace(adapter=adapter)
        scores = scorer.score(other, views(0, 0))
        scorer._pending.pop(rid)
        assert (scores.get("r0", 0.0) > 0.9) is (adapter == "sql"), (adapter, scores)


def test_a_prompt_shorter_than_a_block_is_neither_matched_nor_remembered_nor_learned() -> None:
    policy = make_policy("prefix-aware", random.Random(0))
    scorer = policy.scorers[0][0]  # type: ignore[attr-defined]
    replicas = [ReplicaView(id="r0", model="m"), ReplicaView(id="r1", model="m")]
    short = ctx("x" * 127, rid="short")  # one character short of the 128 of a block
    assert policy.explain(short, replicas).scores["prefix-cache"] == {}
    policy.on_routed(short, "r0")
    policy.on_done(short, "r0", "ok", prompt_tokens=100)
    assert scorer.index.blocks() == 0 and len(scorer._pending) == 0
    assert policy.take_prediction(short) is None
    assert scorer.chars_per_token == 4.0  # 1.27 characters per token taught nothing
    whole = ctx("x" * 128, rid="whole")
    policy.explain(whole, replicas)
    policy.on_routed(whole, "r0")
    policy.on_done(whole, "r0", "ok", prompt_tokens=64)
    assert scorer.index.size("r0") == 1 and scorer.chars_per_token == 2.0
    assert policy.take_prediction(whole) == 0.0  # predicted (nothing cached yet) and taken
