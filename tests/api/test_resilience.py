"""Outlier ejection and the retry budget against real fake-engine processes: engine 5xx
eject a replica while requests go elsewhere, a client's 4xx never does, and a spent
budget stops retries."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support import Server, start_fake_engine, start_gateway, wait_until

ADMIN_KEY = "resilience-test-key"
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    servers = {"ok": start_fake_engine(), "broken": start_fake_engine("--fail-status", "500"),
               "rejects": start_fake_engine("--fail-status", "422")}
    config = {
        "server": {"admin_key": ADMIN_KEY},
        "health": {"interval_s": 0.3,
                   "outlier": {"consecutive_failures": 2, "base_ejection_s": 60}},
        "models": [
            {"name": "ejects", "engine": "openai", "routing": "round-robin",
             "url": [servers["broken"].url, servers["ok"].url]},
            {"name": "rejects", "engine": "openai", "routing": "round-robin",
             "url": [servers["rejects"].url, servers["ok"].url]},
            {"name": "no-budget", "engine": "openai", "routing": "round-robin",
             "url": [servers["broken"].url, servers["ok"].url],
             "retry_budget": {"ratio": 0, "min_retries": 0}},
        ],
    }
    try:
        servers["gateway"] = start_gateway(config, tmp_path_factory.mktemp("resilience"))
        wait_until(lambda: all(r["healthy"] for m in ("ejects", "rejects", "no-budget")
                               for r in replicas(servers["gateway"], m).values()),
                   30, "every replica healthy")
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def replicas(gateway: Server, model: str) -> dict[str, dict[str, object]]:
    response = httpx.get(gateway.url + "/admin/status", timeout=10,
                         headers={"authorization": f"Bearer {ADMIN_KEY}"})
    pools = response.json()["models"][model]["pools"]
    return {r["id"]: r for pool in pools.values() for r in pool["replicas"]}


def sample(gateway: Server, name: str, **labels: str) -> float | None:
    want = [f'{k}="{v}"' for k, v in labels.items()]
    for line in httpx.get(gateway.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{") and all(w in line for w in want):
            return float(line.rsplit(" ", 1)[1])
    return None


def chat(gateway: Server, model: str) -> httpx.Response:
    return httpx.post(gateway.url + "/v1/chat/completions", json={"model": model, **CHAT},
                      timeout=30)


def test_engine_5xx_are_retried_elsewhere_and_eject_the_replica(
        fleet: dict[str, Server]) -> None:
    gateway = fleet["gateway"]
    answers = [chat(gateway, "ejects") for _ in range(6)]
    assert [(r.status_code, r.headers["x-llmgw-replica"]) for r in answers] == \
        [(200, "ejects-1")] * 6
    outlier = replicas(gateway, "ejects")["ejects-0"]["outlier"]
    assert (outlier["state"], outlier["ejections"]) == ("ejected", 1)  # type: ignore[index]
    assert sample(gateway, "llmgw_replica_ejections_total", model="ejects",
                  replica="ejects-0", reason="5xx") == 1.0
    assert sample(gateway, "llmgw_replica_ejected", model="ejects", replica="ejects-0") == 1.0
    # max_ejected_percent (50): the other replica of two may not go too.
    assert sample(gateway, "llmgw_replica_ejected", model="ejects", replica="ejects-1") == 0.0


def test_a_clients_4xx_never_ejects(fleet: dict[str, Server]) -> None:
    gateway = fleet["gateway"]
    statuses = sorted(chat(gateway, "rejects").status_code for _ in range(6))
    assert statuses == [200] * 3 + [422] * 3
    assert replicas(gateway, "rejects")["rejects-0"]["outlier"] == {
        "state": "in", "ejections": 0, "failures": 0, "ejected_for_s": 0}


def test_a_spent_retry_budget_stops_retries(fleet: dict[str, Server]) -> None:
    gateway = fleet["gateway"]
    # Round-robin: one of the two goes to the broken replica first, and may not retry.
    answers = sorted((chat(gateway, "no-budget") for _ in range(2)),
                     key=lambda r: r.status_code)
    assert [r.status_code for r in answers] == [200, 502]
    assert answers[1].json()["error"]["code"] == "upstream_error"
    assert sample(gateway, "llmgw_retries_denied_total", model="no-budget") == 1.0
