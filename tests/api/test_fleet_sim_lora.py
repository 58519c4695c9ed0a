"""The fleet simulator's LoRA adapters (bench/fleet_sim/adapters.py, sim_engine.py).

One sim process serves one replica with 2 adapter slots and a 7 ms load; a request whose
``model`` is not ``sim`` runs under that adapter. Assertions are on the sim's reported
simulated times and counters, never on wall-clock. The LoRA mix workload is pure.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bench.fleet_sim.adapters import AdapterSlots
from bench.fleet_sim.bound import Sent, hit_bound
from bench.fleet_sim.lora_mix import adapter_names, with_adapters
from bench.fleet_sim.replica import CostModel, SimReplica
from bench.fleet_sim.tenants import tenants, working_set_tokens
from tests.support import Server, free_port

LOAD_MS = 7.0
PROMPT = [{"role": "user", "content": "w" * 16 * 4 * 4}]  # 4 full blocks and a bit


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    port = free_port()
    server = Server(
        [
            sys.executable,
            "-m",
            "bench.fleet_sim.sim_engine",
            "--ports",
            str(port),
            "--max-loras",
            "2",
            "--lora-load-ms",
            str(LOAD_MS),
            "--decode-ms-per-token",
            "1",
        ],
        port,
        "/health",
        timeout_s=20,
    )
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def url(sim: str) -> str:
    httpx.post(sim + "/sim/reset", timeout=5).raise_for_status()
    return sim


def chat(url: str, model: str) -> dict[str, Any]:
    body = {"model": model, "messages": PROMPT, "max_tokens": 1}
    response = httpx.post(url + "/v1/chat/completions", json=body, timeout=10)
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    assert data["model"] == model
    return data


def listed(url: str) -> list[str]:
    """Adapters as llmgw's AdapterClient reads vLLM's listing: entries with a parent."""
    models = httpx.get(url + "/v1/models", timeout=5).json()["data"]
    assert models[0]["id"] == "sim" and models[0]["parent"] is None
    return [m["id"] for m in models if m.get("parent") == "sim"]


def state(url: str) -> dict[str, Any]:
    return dict(httpx.get(url + "/sim/state", timeout=5).json())


def test_a_missing_adapter_is_loaded_once_and_charged_to_ttft(url: str) -> None:
    first, second = chat(url, "lora-a"), chat(url, "lora-a")
    assert first["sim"]["load_ms"] >= LOAD_MS
    assert first["sim"]["ttft_ms"] >= first["sim"]["load_ms"]
    assert second["sim"]["load_ms"] == 0
    assert chat(url, "sim")["sim"]["load_ms"] == 0  # the base model needs no adapter
    assert listed(url) == ["lora-a"]
    assert state(url)["adapter_loads"] == 1


def test_slots_evict_the_least_recently_used_adapter(url: str) -> None:
    for model in ("lora-a", "lora-b", "lora-a", "lora-c"):
        chat(url, model)
    assert listed(url) == ["lora-a", "lora-c"]  # b was the least recently used
    assert (state(url)["adapter_loads"], state(url)["adapter_evictions"]) == (3, 1)
    assert chat(url, "lora-b")["sim"]["load_ms"] >= LOAD_MS


def test_slots_in_use_are_never_evicted() -> None:
    slots = AdapterSlots(2)
    for name in ("a", "b"):
        slots.load(name)
        slots.pin(name)
    slots.touch("a")  # b is now the least recently used
    assert not slots.has_room()  # a third adapter waits for a request to end
    slots.unpin("a")
    assert slots.has_room()
    slots.load("c")
    assert slots.names() == ["b", "c"]  # a went: b, older, is still in use
    assert (slots.loads, slots.evictions) == (3, 1)


def test_a_load_picks_its_victim_before_sleeping_its_cost() -> None:
    """Else a request could pin the victim during the load, leaving no slot to load into."""

    async def scenario() -> None:
        replica = SimReplica("r", CostModel(max_loras=2, lora_load_ms=5))
        async with replica.adapter("a"):
            await replica.load_adapter("b")
            loading = asyncio.create_task(replica.load_adapter("c"))
            await asyncio.sleep(0)  # c takes the lane, then sleeps its load
            assert replica.adapters.names() == ["a"]  # b, the only one unused, went
            await loading
            assert replica.adapters.names() == ["a", "c"]

    asyncio.run(scenario())


def test_runtime_lora_api_as_vllm(url: str) -> None:
    load = httpx.post(
        url + "/v1/load_lora_adapter",
        timeout=5,
        json={"lora_name": "lora-a", "lora_path": "sim/lora-a"},
    )
    assert load.status_code == 200 and load.text.startswith("Success")
    assert listed(url) == ["lora-a"]
    assert chat(url, "lora-a")["sim"]["load_ms"] == 0  # already resident
    unload = httpx.post(url + "/v1/unload_lora_adapter", json={"lora_name": "lora-a"}, timeout=5)
    assert unload.status_code == 200 and listed(url) == []
    again = httpx.post(url + "/v1/unload_lora_adapter", json={"lora_name": "lora-a"}, timeout=5)
    assert again.status_code == 404
    bad = httpx.post(url + "/v1/load_lora_adapter", json={"lora_path": "x"}, timeout=5)
    assert bad.status_code == 400


def test_kv_blocks_are_salted_by_adapter(url: str) -> None:
    chat(url, "sim")
    cached = [
        chat(url, m)["usage"]["prompt_tokens_details"]["cached_tokens"]
        for m in ("lora-a", "lora-a", "lora-b", "sim")
    ]
    assert cached == [0, 64, 0, 64]  # the prompt's 4 full blocks, under each adapter apart
    matched = httpx.post(
        url + "/sim/match", json={"model": "lora-c", "messages": PROMPT}, timeout=5
    ).json()["cached"]
    assert list(matched.values()) == [0]


def test_the_bound_salts_blocks_by_adapter_as_the_sims() -> None:
    prompt = "p" * 16 * 4 * 4
    same = hit_bound([Sent(prompt, "", "a"), Sent(prompt, "", "a")], 16, 1, 1.2)
    other = hit_bound([Sent(prompt, "", "a"), Sent(prompt, "", "b")], 16, 1, 1.2)
    assert same.any_load > 0 and other.any_load == 0


def test_lora_mix_keeps_the_sessions_and_draws_popular_adapters_more() -> None:
    base = tenants(400, 1)
    mixed = with_adapters(base, 8, 1)
    assert mixed == with_adapters(base, 8, 1)
    assert [(s.id, s.steps) for s in mixed.sessions] == [(s.id, s.steps) for s in base.sessions]
    names = adapter_names(8)
    counts = [sum(s.adapter == n for s in mixed.sessions) for n in names]
    assert counts[0] == max(counts) and all(s.adapter in names for s in mixed.sessions)
    # Each tenant's system prompt is cached once per adapter now.
    assert working_set_tokens(mixed) > working_set_tokens(base)
