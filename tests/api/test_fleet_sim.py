"""The fleet simulator's cost model and cache accounting (bench/fleet_sim/sim_engine.py).

One sim process serves two replicas with a 32-block cache of 16-token blocks, 2 batch
slots, 0.05 ms/token prefill and 2 ms/token decode. Prompts are sized in whole blocks:
the tokenizer stand-in is 4 characters per token and a one-message chat renders as
``<|user|>`` + content + ``<|end|><|assistant|>`` (28 characters around the content).
Assertions are on the sim's reported simulated times, never on wall-clock. The goals
check (bench/fleet_sim/goals.py), the round-robin spreading over gateway instances and
the instance comparison table are pure and tested on values made here.
"""

from __future__ import annotations

import concurrent.futures
import json
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bench.fleet_sim import goals
from bench.fleet_sim.loadgen import round_robin
from bench.fleet_sim.report import Row, instances_table
from tests.support import Server, engine_counter, free_port, wait_until

BLOCK_CHARS = 16 * 4
PREFILL_MS = 0.05


@pytest.fixture(scope="module")
def sim() -> Iterator[list[str]]:
    ports = [free_port(), free_port()]
    server = Server([sys.executable, "-m", "bench.fleet_sim.sim_engine",
                     "--ports", ",".join(map(str, ports)), "--kv-blocks", "32",
                     "--block-tokens", "16", "--max-running", "2",
                     "--prefill-ms-per-token", str(PREFILL_MS), "--decode-ms-per-token", "2"],
                    ports[0], "/health", timeout_s=20)
    yield [f"http://127.0.0.1:{p}" for p in ports]
    server.stop()


@pytest.fixture
def urls(sim: list[str]) -> list[str]:
    for url in sim:
        httpx.post(url + "/sim/reset", timeout=5).raise_for_status()
    return sim


def prompt(tag: str, blocks: int) -> list[dict[str, Any]]:
    """A one-message chat whose rendering is exactly ``blocks`` blocks long."""
    content = (tag * BLOCK_CHARS * blocks)[: BLOCK_CHARS * blocks - 28]
    return [{"role": "user", "content": content}]


def chat(url: str, messages: list[dict[str, Any]], max_tokens: int = 1) -> httpx.Response:
    body = {"model": "sim", "messages": messages, "max_tokens": max_tokens}
    response = httpx.post(url + "/v1/chat/completions", json=body, timeout=10)
    response.raise_for_status()
    return response


def cached(response: httpx.Response) -> int:
    return int(response.json()["usage"]["prompt_tokens_details"]["cached_tokens"])


def match(url: str, messages: list[dict[str, Any]]) -> dict[str, int]:
    """Each replica's cached tokens for a prompt, without touching any cache."""
    response = httpx.post(url + "/sim/match", json={"messages": messages}, timeout=5)
    return dict(response.json()["cached"])


def test_repeat_hits_on_the_same_replica_only_and_prefills_less(urls: list[str]) -> None:
    a, b = urls
    long = prompt("a", 10)  # 160 tokens; the last one is always computed: 9 blocks can hit
    first, second, other = chat(a, long), chat(a, long), chat(b, long)
    assert [cached(first), cached(second), cached(other)] == [0, 144, 0]
    assert first.json()["usage"]["prompt_tokens"] == 160
    assert float(first.headers["x-sim-prefill-ms"]) == pytest.approx(160 * PREFILL_MS)
    assert float(second.headers["x-sim-prefill-ms"]) == pytest.approx(16 * PREFILL_MS)
    assert second.json()["sim"]["replica"] == second.json()["system_fingerprint"]


def test_next_chat_turn_hits_the_history_and_the_reply(urls: list[str]) -> None:
    a = urls[0]
    turn1 = prompt("h", 10)
    reply = chat(a, turn1, max_tokens=40).json()["choices"][0]["message"]["content"]
    assert len(reply) == 40 * 4  # one 4-character token per generated token
    turn2 = [*turn1, {"role": "assistant", "content": reply},
             {"role": "user", "content": "and then?"}]
    # 160 prompt + 40 generated tokens = 12 full blocks, cached when the reply finished.
    assert cached(chat(a, turn2)) == 12 * 16


def test_lru_evicts_the_oldest_sequence_tail_first(urls: list[str]) -> None:
    a = urls[0]
    p1, p2, p3, p4 = (prompt(tag, 10) for tag in "1234")
    for p in (p1, p2, p3):
        chat(a, p)  # 30 of 32 blocks
    assert cached(chat(a, p1)) == 144  # p1 is now the most recent
    chat(a, p4)  # 40 blocks: the 8 least recent go, from p2's tail
    state = httpx.get(a + "/sim/state", timeout=5).json()
    assert (state["blocks"], state["evicted_blocks"]) == (32, 8)
    name = "sim-" + a.rsplit(":", 1)[1]
    # p2 keeps its first 2 blocks: a shared root outlives its tail.
    assert [match(a, p)[name] for p in (p1, p2, p3, p4)] == [144, 32, 144, 144]


def test_metrics_counters_match_the_answers(urls: list[str]) -> None:
    a = urls[0]
    answers = [chat(a, prompt("m", 6)), chat(a, prompt("m", 6)), chat(a, prompt("n", 3))]
    prompt_tokens = sum(r.json()["usage"]["prompt_tokens"] for r in answers)
    hits = sum(cached(r) for r in answers)
    assert (prompt_tokens, hits) == (96 + 96 + 48, 80)
    assert engine_counter(a, "vllm:prefix_cache_queries_total") == prompt_tokens
    assert engine_counter(a, "vllm:prefix_cache_hits_total") == hits
    assert engine_counter(a, "vllm:num_requests_running") == 0
    assert engine_counter(a, "vllm:num_requests_waiting") == 0
    assert engine_counter(a, "vllm:kv_cache_usage_perc") == 0
    state = httpx.get(a + "/sim/state", timeout=5).json()
    assert (state["requests"], state["hits_tokens"], state["queries_tokens"]) == (
        3, hits, prompt_tokens)


def test_stream_reports_usage_and_done(urls: list[str]) -> None:
    a = urls[0]
    chat(a, prompt("s", 4))
    body = {"model": "sim", "messages": prompt("s", 4), "max_tokens": 3, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", a + "/v1/chat/completions", json=body, timeout=10) as response:
        assert float(response.headers["x-sim-prefill-ms"]) == pytest.approx(16 * PREFILL_MS)
        lines = [ln for ln in response.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert "".join(c["delta"].get("content", "") for e in events for c in e["choices"]) \
        .count(" ") == 3
    assert events[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 48


def test_batch_limit_queues_fifo(urls: list[str]) -> None:
    a = urls[0]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(chat, a, prompt(str(i), 2), 250) for i in range(3)]
        wait_until(lambda: engine_counter(a, "vllm:num_requests_waiting") == 1, 5,
                   "one request queued behind 2 batch slots")
        assert engine_counter(a, "vllm:num_requests_running") == 2
        assert 0 < engine_counter(a, "vllm:kv_cache_usage_perc") <= 1
        queued = sorted(float(f.result().headers["x-sim-queue-ms"]) for f in futures)
    # The third waited for a slot: at least one request's 249 decode steps of 2 ms.
    assert queued[0] < 50 and queued[1] < 50 and queued[2] >= 400


def test_client_disconnect_aborts_the_request(urls: list[str]) -> None:
    a = urls[0]
    body = {"model": "sim", "messages": prompt("d", 2), "max_tokens": 5000, "stream": True}
    with httpx.stream("POST", a + "/v1/chat/completions", json=body, timeout=10) as response:
        next(response.iter_lines())
    wait_until(lambda: httpx.get(a + "/sim/state", timeout=5).json()["aborted"] == 1, 5,
               "the sim to abort the stream")
    state = httpx.get(a + "/sim/state", timeout=5).json()
    assert (state["running"], state["requests"]) == (0, 1)
    assert state["generation_tokens"] < 5000


def _row(target: str, hit: float, p50: float, p99: float, load: float) -> Row:
    return Row(target, "chat", hit_rate=hit, ttft_p50_ms=p50, ttft_p99_ms=p99,
               load_imbalance=load)


def test_goals_compare_each_policy_with_the_reference_rows() -> None:
    rows = [_row("llmgw/round-robin", 0.5, 24, 60, 1.0),
            _row("oracle", 0.8, 8, 60, 1.6),
            _row("sglang-router/cache_aware", 0.7, 1700, 2000, 8.0),
            _row("sglang-router/cache_aware-abs4-rel1.5", 0.8, 48, 40, 1.3),
            _row("llmgw/session-aware", 0.75, 7, 45, 1.35),
            Row("llmgw/prefix-aware", "chat", reason="llmgw check: unknown policy")]
    assert goals.check(rows) == [
        "goal  llmgw/prefix-aware hit rate >= 90% of oracle's (chat): n/a (no row)",
        "goal  llmgw/prefix-aware TTFT p50 >= 2x lower than llmgw/round-robin's (chat): "
        "n/a (no row)",
        "goal  llmgw/prefix-aware TTFT p99 lower than sglang-router/cache_aware's (chat): "
        "n/a (no row)",
        "goal  llmgw/prefix-aware TTFT p99 lower than sglang-router/cache_aware-abs4-rel1.5's "
        "(chat): n/a (no row)",
        "goal  llmgw/prefix-aware max/mean load < 1.3 (chat): n/a (no row)",
        "goal  llmgw/session-aware hit rate >= 90% of oracle's (chat): 75.0% vs 80.0% -> met",
        "goal  llmgw/session-aware TTFT p50 >= 2x lower than llmgw/round-robin's (chat): "
        "7 ms vs 24 ms -> met",
        "goal  llmgw/session-aware TTFT p99 lower than sglang-router/cache_aware's (chat): "
        "45 ms vs 2000 ms -> met",
        "goal  llmgw/session-aware TTFT p99 lower than sglang-router/cache_aware-abs4-rel1.5's "
        "(chat): 45 ms vs 40 ms -> NOT met",
        "goal  llmgw/session-aware max/mean load < 1.3 (chat): 1.35 vs 1.30 -> NOT met",
    ]


def test_round_robin_spreads_requests_over_instances_in_turn() -> None:
    pick = round_robin(["http://a/v1", "http://b/v1", "http://c/v1"])
    assert [pick() for _ in range(7)] == ["http://a/v1", "http://b/v1", "http://c/v1",
                                          "http://a/v1", "http://b/v1", "http://c/v1",
                                          "http://a/v1"]


def test_goals_read_only_single_instance_rows() -> None:
    rows = [_row("llmgw/session-aware", 0.75, 7, 45, 1.35),
            _row("llmgw/round-robin", 0.5, 24, 60, 1.0),
            Row("llmgw/round-robin", "chat", ttft_p50_ms=2, instances=2)]
    assert [line for line in goals.check(rows) if "session-aware TTFT p50" in line] == [
        "goal  llmgw/session-aware TTFT p50 >= 2x lower than llmgw/round-robin's (chat): "
        "7 ms vs 24 ms -> met"]
    assert [r.label for r in rows[1:]] == ["llmgw/round-robin", "llmgw/round-robin x2"]


def test_instances_table_puts_counts_side_by_side_with_ratios_to_one() -> None:
    def row(instances: int, hit: float, p50: float, load: float, **kw: Any) -> Row:
        return Row("llmgw/prefix-aware", "chat", instances=instances, hit_rate=hit,
                   ttft_p50_ms=p50, ttft_p99_ms=4 * p50, engine_ttft_p50_ms=p50 - 2,
                   load_imbalance=load, **kw)

    rows = [row(1, 0.8, 10, 1.1), row(2, 0.6, 15, 1.25, errors=1),
            Row("llmgw/prefix-aware", "chat", reason="not ready", instances=4),
            Row("oracle", "chat", hit_rate=0.9),  # one count only: not compared
            Row("llmgw/least-load", "noreuse", instances=1),
            Row("llmgw/least-load", "noreuse", instances=4, ttft_p50_ms=3)]
    assert instances_table(rows).splitlines() == [
        "| workload | target | hit % (x1 / x2 / x4) | TTFT p50 ms (x1 / x2 / x4) "
        "| TTFT p99 ms (x1 / x2 / x4) | engine TTFT p50 ms (x1 / x2 / x4) "
        "| load imb. (x1 / x2 / x4) | errors (x1 / x2 / x4) |",
        "|---|---|---|---|---|---|---|---|",
        "| chat | llmgw/prefix-aware | 80.0 / 60.0 (0.75) / n/a | 10 / 15 (1.50) / n/a "
        "| 40 / 60 (1.50) / n/a | 8 / 13 (1.62) / n/a | 1.10 / 1.25 / n/a | 0 / 1 / n/a |",
        # No ratio to a zero; a count that did not run is n/a.
        "| noreuse | llmgw/least-load | 0.0 / n/a / 0.0 | 0 / n/a / 3 | 0 / n/a / 0 "
        "| 0 / n/a / 0 | 0.00 / n/a / 0.00 | 0 / n/a / 0 |",
    ]
