"""LoRA multiplexing through a real gateway in front of real embedded engines (two
replicas, two adapter slots each) serving the demo model and offline demo adapters."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from llmgw.engines.demo_lora import (
    build_demo_adapters,
    write_high_rank_adapter,
    write_incomplete_adapter,
    write_wrong_base_adapter,
)
from tests.support import Server, launched_engine_urls, start_gateway, wait_until

ADMIN = {"authorization": "Bearer test-admin-key"}
MESSAGES = [{"role": "user", "content": "Write a haiku about routers."}]
ADAPTERS = [f"demo-lora-{i}" for i in range(6)]


def lora_config(tmp: Path, roots: list[Path], **lora: Any) -> dict[str, Any]:
    return {
        "server": {"admin_key": "test-admin-key", "state_dir": str(tmp / "state")},
        "health": {"interval_s": 0.5},
        "models": [{
            "name": "demo", "engine": "transformers", "model": "demo", "replicas": 2,
            "routing": "least-load",
            "lora": {"max_adapters_per_replica": 2, "max_rank": 16,
                     "adapters": [{"name": n, "source": "demo"} for n in ADAPTERS],
                     "roots": [str(r) for r in roots], "failure_cooldown_s": 300,
                     "hotness": {"enabled": False, "interval_s": 0.5}, **lora},
        }],
    }


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("adapter-roots")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, roots: Path) -> Iterator[Server]:
    build_demo_adapters(len(ADAPTERS))
    tmp = tmp_path_factory.mktemp("lora")
    server = start_gateway(lora_config(tmp, [roots]), tmp)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(gateway: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


def open_client(gateway: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def engines(gateway: Server) -> dict[str, str]:
    """Replica id -> its engine's URL, from the launcher's log lines."""
    return {line.split(" ready at ")[0].rsplit(" ", 1)[1]: line.rsplit(" ", 1)[1]
            for line in gateway.output().splitlines() if " ready at http://" in line}


def chat(client: openai.OpenAI, model: str, **extra: Any) -> tuple[str, str]:
    """Greedy answer and the replica that served it."""
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, max_tokens=12, temperature=0,  # type: ignore[arg-type]
        **extra)
    return raw.parse().choices[0].message.content or "", raw.headers["x-llmgw-replica"]


def metric(gateway: Server, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1])
               for line in httpx.get(gateway.url + "/metrics").text.splitlines()
               if line.startswith(prefix))


def admin_listing(gateway: Server) -> dict[str, dict[str, Any]]:
    data = httpx.get(gateway.url + "/admin/adapters", headers=ADMIN).json()["data"]
    return {a["name"]: a for a in data}


def test_models_lists_the_base_and_its_adapters(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"demo", *ADAPTERS}
    assert all(getattr(models[a], "parent", None) == "demo" for a in ADAPTERS)
    assert getattr(models["demo"], "parent", None) is None


def test_adapter_output_is_the_engines_own_and_differs_from_the_base(
        gateway: Server, client: openai.OpenAI) -> None:
    base, _ = chat(client, "demo")
    text, replica = chat(client, "demo-lora-0")
    other, _ = chat(client, "demo-lora-1")
    assert text != base and other != text
    direct = httpx.post(engines(gateway)[replica] + "/v1/chat/completions", json={
        "model": "demo-lora-0", "messages": MESSAGES, "max_tokens": 12, "temperature": 0},
        timeout=60).json()
    assert direct["choices"][0]["message"]["content"] == text


def test_an_adapter_is_looked_up_and_embeds_through_its_own_weights(
        client: openai.OpenAI) -> None:
    card = client.models.retrieve("demo-lora-0")
    assert (card.id, getattr(card, "parent", None)) == ("demo-lora-0", "demo")
    base = client.embeddings.create(model="demo", input="routers").data[0].embedding
    tuned = client.embeddings.create(model="demo-lora-0", input="routers").data[0].embedding
    again = client.embeddings.create(model="demo:demo-lora-0", input="routers")
    assert len(tuned) == len(base) == 128
    assert tuned != pytest.approx(base, abs=1e-3)  # the adapter's layers took part
    assert again.data[0].embedding == pytest.approx(tuned, abs=1e-6)


def test_three_ways_to_name_an_adapter_agree(client: openai.OpenAI) -> None:
    by_name, _ = chat(client, "demo-lora-2")
    by_pair, _ = chat(client, "demo:demo-lora-2")
    by_header, _ = chat(client, "demo",
                        extra_headers={"serve_multiplexed_model_id": "demo-lora-2"})
    assert by_name == by_pair == by_header


@pytest.mark.parametrize(("model", "headers"), [
    ("demo-lora-99", {}), ("demo:nope", {}), ("demo", {"serve_multiplexed_model_id": "nope"}),
])
def test_unknown_adapters_are_404(client: openai.OpenAI, model: str,
                                  headers: dict[str, str]) -> None:
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        chat(client, model, extra_headers=headers)


def test_concurrent_requests_for_a_cold_adapter_share_one_load(
        gateway: Server, client: openai.OpenAI) -> None:
    loads = 'llmgw_lora_loads_total{adapter="demo-lora-5",model="demo",reason="demand",result="ok"}'
    assert metric(gateway, loads) == 0
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: chat(client, "demo-lora-5"), range(8)))
    assert len({text for text, _ in answers}) == 1
    assert len({replica for _, replica in answers}) == 1  # all followed the one load
    assert metric(gateway, loads) == 1


def test_more_adapters_than_slots_churn_and_answer_the_same(
        gateway: Server, client: openai.OpenAI) -> None:
    first = {name: chat(client, name)[0] for name in ADAPTERS}
    evictions = metric(gateway, "llmgw_lora_evictions_total{")
    again = {name: chat(client, name)[0] for name in reversed(ADAPTERS)}
    assert again == first  # evicted, loaded again, same weights
    assert evictions > 0 and metric(gateway, "llmgw_lora_evictions_total{") > evictions
    for url in engines(gateway).values():
        listed = httpx.get(url + "/v1/models").json()["data"]
        assert len([m for m in listed if m.get("parent")]) <= 2  # the slots hold


def test_residency_follows_the_engines_own_listing(gateway: Server,
                                                   client: openai.OpenAI) -> None:
    text, replica = chat(client, "demo-lora-3")
    assert replica in admin_listing(gateway)["demo-lora-3"]["resident_on"]
    # Out of band: the engine drops the adapter (as a restarted engine would have).
    httpx.post(engines(gateway)[replica] + "/v1/unload_lora_adapter",
               json={"lora_name": "demo-lora-3"}).raise_for_status()
    wait_until(lambda: replica not in admin_listing(gateway)["demo-lora-3"]["resident_on"],
               10, "the gateway to notice the engine no longer holds demo-lora-3")
    assert metric(gateway, "llmgw_lora_residency_drift_total{") >= 1
    assert chat(client, "demo-lora-3")[0] == text  # loaded again where needed


BAD_ADAPTERS: list[tuple[str, Callable[[Path], Path], str]] = [
    ("too-big", lambda d: write_high_rank_adapter(d, rank=32), "rank 32"),
    ("other-base", lambda d: write_wrong_base_adapter(d, "hidden-size"), "shape mismatch"),
    ("no-weights", lambda d: write_incomplete_adapter(d, "adapter_model.safetensors"),
     "adapter_model.safetensors"),
]


@pytest.mark.parametrize(("name", "write", "reason"), BAD_ADAPTERS,
                         ids=[b[0] for b in BAD_ADAPTERS])
def test_an_adapter_that_cannot_load_fails_clearly_once_and_harms_nothing(
        gateway: Server, client: openai.OpenAI, roots: Path, name: str,
        write: Callable[[Path], Path], reason: str) -> None:
    write(roots / name)
    reply = httpx.post(gateway.url + "/admin/adapters", headers=ADMIN, json={
        "model": "demo", "name": name, "source": str(roots / name)})
    assert reply.status_code == 201, reply.text
    for _ in range(2):
        with pytest.raises(openai.BadRequestError) as info:
            chat(client, name)
        error = info.value.body
        assert isinstance(error, dict) and error["code"] == "adapter_load_failed"
        assert f"adapter '{name}'" in error["message"] and reason in error["message"], error
    # Refused from the cooldown the second time: no retry loop against the engine.
    failed = (f'llmgw_lora_loads_total{{adapter="{name}",model="demo",reason="demand",'
              'result="failed"}')
    assert metric(gateway, failed) == 1
    assert chat(client, "demo")[0] and httpx.get(gateway.url + "/ready").status_code == 200


def test_admin_api_needs_the_key_and_keeps_sources_inside_the_roots(
        gateway: Server, roots: Path, tmp_path: Path) -> None:
    url = gateway.url + "/admin/adapters"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"authorization": "Bearer wrong"}).status_code == 401
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    cases = [
        ({"model": "demo", "name": "x1", "source": str(outside)}, 400, "outside"),
        ({"model": "demo", "name": "x2", "source": str(roots / ".." / "elsewhere")}, 400, ".."),
        ({"model": "demo", "name": "x3", "source": str(roots / "missing")}, 400, "directory"),
        ({"model": "nope", "name": "x4", "source": str(roots)}, 404, "no LoRA"),
        ({"model": "demo", "name": "demo-lora-0", "source": str(roots)}, 409, "taken"),
        ({"model": "demo", "name": "demo", "source": str(roots)}, 409, "taken"),
        ({"model": "demo", "name": "../x", "source": str(roots)}, 400, "name"),
    ]
    for body, status, words in cases:
        reply = httpx.post(url, headers=ADMIN, json=body)
        assert reply.status_code == status and words in reply.json()["error"]["message"], \
            (body, reply.text)
    assert httpx.delete(url + "/nope", headers=ADMIN).status_code == 404


def test_runtime_adapters_survive_a_restart(tmp_path: Path) -> None:
    roots = tmp_path / "roots"
    shutil.copytree(build_demo_adapters(1)["demo-lora-0"], roots / "mine")
    config = lora_config(tmp_path, [roots])
    gateway = start_gateway(config, tmp_path)
    try:
        reply = httpx.post(gateway.url + "/admin/adapters", headers=ADMIN, json={
            "model": "demo", "name": "mine", "source": "mine"})  # relative to the root
        assert reply.status_code == 201, reply.text
        with open_client(gateway) as client:
            expected = chat(client, "demo-lora-0")[0]
            assert chat(client, "mine")[0] == expected  # the same weights, another name
        assert httpx.delete(gateway.url + "/admin/adapters/demo-lora-1",
                            headers=ADMIN).status_code == 200
    finally:
        gateway.stop()
    gateway = start_gateway(config, tmp_path)
    try:
        listed = {m["id"] for m in httpx.get(gateway.url + "/v1/models").json()["data"]}
        assert "mine" in listed and "demo-lora-1" not in listed
        with open_client(gateway) as client:
            assert chat(client, "mine")[0] == expected
    finally:
        gateway.stop()


def test_hot_adapters_are_preloaded_on_more_replicas(tmp_path: Path) -> None:
    config = lora_config(tmp_path, [], hotness={"enabled": True, "interval_s": 0.3,
                                                 "hot_rate": 0.5, "window_s": 20})
    gateway = start_gateway(config, tmp_path)
    try:
        with open_client(gateway) as client:
            for _ in range(12):  # ~12 requests in a few seconds: well above 0.5/s
                chat(client, "demo-lora-4")
        wait_until(lambda: len(admin_listing(gateway)["demo-lora-4"]["resident_on"]) == 2,
                   20, "demo-lora-4 to be pre-loaded on the second replica")
        assert metric(gateway, 'llmgw_lora_loads_total{adapter="demo-lora-4",model="demo",'
                               'reason="preload",result="ok"}') >= 1
        assert admin_listing(gateway)["demo-lora-4"]["request_rate"] > 0.5
    finally:
        gateway.stop()


def test_launched_engines_are_started_with_lora(gateway: Server) -> None:
    for url in launched_engine_urls(gateway):
        assert 'max_lora="2"' in httpx.get(url + "/metrics").text


def register(gateway: Server, name: str, source: str) -> None:
    reply = httpx.post(gateway.url + "/admin/adapters", headers=ADMIN,
                       json={"model": "demo", "name": name, "source": source})
    assert reply.status_code == 201, reply.text


def delete(gateway: Server, name: str) -> None:
    reply = httpx.delete(gateway.url + "/admin/adapters/" + name, headers=ADMIN)
    assert reply.status_code == 200, reply.text


def listed(url: str) -> set[str]:
    """The adapters an engine itself says it holds."""
    return {m["id"] for m in httpx.get(url + "/v1/models").json()["data"] if m.get("parent")}


def copy_demo(roots: Path, demo: str, as_name: str) -> None:
    if not (roots / as_name).exists():
        shutil.copytree(build_demo_adapters(len(ADAPTERS))[demo], roots / as_name)


class LongStream:
    """A streamed request that runs for ~2000 tokens: started, its first chunk read, then
    left running while the test works; ``finish`` reads it to the end."""

    def __init__(self, gateway: Server, model: str) -> None:
        self._http = httpx.Client(timeout=120)
        self._response = self._http.send(self._http.build_request(
            "POST", gateway.url + "/v1/chat/completions", json={
                "model": model, "messages": MESSAGES, "stream": True, "temperature": 0,
                "max_tokens": 2000, "ignore_eos": True}), stream=True)
        assert self._response.status_code == 200
        self.replica = self._response.headers["x-llmgw-replica"]
        self._lines = self._response.iter_lines()
        assert next(line for line in self._lines if line.startswith("data: "))

    def finish(self) -> list[str]:
        rest = [line for line in self._lines if line.startswith("data: ")]
        self._response.close()
        self._http.close()
        return rest


def serves(url: str, name: str, expected: str) -> bool:
    """The engine does not hold ``name``, or answers it with ``expected``."""
    if name not in listed(url):
        return True
    reply = httpx.post(url + "/v1/chat/completions", json={
        "model": name, "messages": MESSAGES, "max_tokens": 12, "temperature": 0}, timeout=60)
    return reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] == \
        expected


def test_a_new_source_under_a_deleted_name_is_served_while_the_old_one_still_runs(
        gateway: Server, client: openai.OpenAI, roots: Path) -> None:
    """Rolling out a new version of an adapter (DELETE + POST under the same name) under
    traffic: from then on the name means the new weights, on every replica."""
    copy_demo(roots, "demo-lora-1", "rollout-v1")
    copy_demo(roots, "demo-lora-2", "rollout-v2")
    old, new = chat(client, "demo-lora-1")[0], chat(client, "demo-lora-2")[0]
    assert old != new
    register(gateway, "rollout", "rollout-v1")
    assert chat(client, "rollout")[0] == old
    running = LongStream(gateway, "rollout")
    where = engines(gateway)[running.replica]
    delete(gateway, "rollout")
    assert "rollout" in listed(where)  # in use when deleted (an idle one is unloaded at once)
    register(gateway, "rollout", "rollout-v2")
    assert [chat(client, "rollout")[0] for _ in range(3)] == [new] * 3
    assert len(running.finish()) > 100
    wait_until(lambda: all(serves(url, "rollout", new) for url in engines(gateway).values()),
               30, "no engine to answer 'rollout' with the old weights")
    assert [chat(client, "rollout")[0] for _ in range(4)] == [new] * 4


def gauges(gateway: Server, adapter: str) -> list[str]:
    """The per-adapter gauge series of ``adapter`` on the gateway's /metrics."""
    return [line for line in httpx.get(gateway.url + "/metrics").text.splitlines()
            if f'adapter="{adapter}"' in line and line.startswith(
                ("llmgw_lora_adapter_resident{", "llmgw_lora_adapter_request_rate{"))]


def test_an_adapter_deleted_while_in_use_is_unloaded_when_its_request_ends(
        gateway: Server, roots: Path) -> None:
    copy_demo(roots, "demo-lora-3", "leaving")
    register(gateway, "leaving", "leaving")
    running = LongStream(gateway, "leaving")
    where = engines(gateway)[running.replica]
    wait_until(lambda: {line.split("{")[0] for line in gauges(gateway, "leaving")} == {
        "llmgw_lora_adapter_resident", "llmgw_lora_adapter_request_rate"}, 10,
        "the gauges of 'leaving' (where it is resident, its request rate)")
    delete(gateway, "leaving")
    assert gauges(gateway, "leaving") == []  # it left the catalog: its series leave too
    assert "leaving" in listed(where)  # its request still runs on it
    assert len(running.finish()) > 100
    wait_until(lambda: "leaving" not in listed(where), 30, "'leaving' to be unloaded")
    assert all("leaving" not in listed(url) for url in engines(gateway).values())
    assert "leaving" not in admin_listing(gateway) and gauges(gateway, "leaving") == []
