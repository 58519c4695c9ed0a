"""Traffic splits and draining through a real gateway in front of the deterministic fake
engine (attached, and launched by the gateway): a canary within 5 points of its weights
over 1000 requests with no session switching version, weights changed by reload, and a
stream on a replica that drains (rolling upgrade) running to its end."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.fleet.conftest import (
    ADMIN_KEY,
    Outcome,
    chat,
    ready_ids,
    reload,
    send,
    status,
    up,
    wait_for,
)
from tests.support import Server, free_port, start_fake_engine

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def engines() -> Iterator[list[Server]]:
    servers = [start_fake_engine(name=name) for name in ("demo-v1", "demo-v2")]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def config_file(engines: list[Server], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("canary") / "gateway.yaml"
    path.write_text(yaml.safe_dump({
        "server": {"admin_key": ADMIN_KEY, "host": "127.0.0.1", "port": free_port()},
        "models": [
            {"name": "demo-v1", "engine": "openai", "url": engines[0].url},
            {"name": "demo-v2", "engine": "openai", "url": engines[1].url},
            # Launched fake engine: slow tokens, so a stream outlives a rolling upgrade.
            {"name": "slow", "engine": "fake", "model": "fake", "replicas": 1,
             "engine_args": {"token_delay_ms": 20}},
        ],
        "aliases": [{"name": "demo", "targets": [{"model": "demo-v1", "weight": 90},
                                                  {"model": "demo-v2", "weight": 10}]}],
    }))
    return path


@pytest.fixture(scope="module")
def gateway(config_file: Path) -> Iterator[Server]:
    server = up(config_file, timeout_s=120)
    yield server
    server.stop()


def target_of(client: httpx.Client, gateway: Server, session: str) -> str:
    response = client.post(gateway.url + "/v1/chat/completions", json=chat("demo", 2),
                           headers={"x-session-id": session})
    assert response.status_code == 200, response.text
    return response.headers["x-llmgw-replica"].rsplit("-", 1)[0]


def test_canary_split_honours_weights_and_keeps_sessions(gateway: Server) -> None:
    with httpx.Client(timeout=30) as client:
        first = {f"s{i}": target_of(client, gateway, f"s{i}") for i in range(500)}
        second = {s: target_of(client, gateway, s) for s in first}
    assert second == first  # 1000 requests; no session switched version
    share = Counter(first.values())["demo-v2"] / len(first)
    assert 0.05 <= share <= 0.15
    assert status(gateway)["aliases"]["demo"] == pytest.approx({"demo-v1": 0.9,
                                                               "demo-v2": 0.1})


def test_weights_change_by_reload(gateway: Server, config_file: Path) -> None:
    config = yaml.safe_load(config_file.read_text())
    config["aliases"][0]["targets"][1]["weight"] = 90
    config["aliases"][0]["targets"][0]["weight"] = 10
    config_file.write_text(yaml.safe_dump(config))
    answer = reload(gateway)
    assert answer.status_code == 200, answer.text
    assert answer.json()["plan"] == {"models": [], "changed": ["aliases"]}
    with httpx.Client(timeout=30) as client:
        picks = Counter(target_of(client, gateway, f"t{i}") for i in range(200))
    assert picks["demo-v2"] > picks["demo-v1"]


def test_a_draining_replica_finishes_its_stream(gateway: Server, config_file: Path) -> None:
    assert ready_ids(gateway, "slow") == ["slow-0"]
    outcome: list[Outcome] = []

    def stream() -> None:
        with httpx.Client(timeout=120) as client:
            outcome.append(send(client, gateway.url, chat("slow", 150, stream=True)))

    thread = threading.Thread(target=stream)
    thread.start()
    wait_for(gateway, lambda s: s["models"]["slow"]["pools"]["mixed"]["replicas"][0][
        "in_flight"] == 1, 30, "the stream to open on slow-0")

    def roll(config: dict[str, Any]) -> None:
        config["models"][2]["engine_args"] = {"token_delay_ms": 5}

    config = yaml.safe_load(config_file.read_text())
    roll(config)
    config_file.write_text(yaml.safe_dump(config))
    assert reload(gateway).status_code == 200
    drained = wait_for(gateway, lambda s: any(
        r["state"] == "draining" for r in s["models"]["slow"]["pools"]["mixed"]["replicas"]),
        60, "slow-0 to drain once slow-1 serves")
    assert {r["id"] for r in drained["models"]["slow"]["pools"]["mixed"]["replicas"]} == \
        {"slow-0", "slow-1"}
    thread.join(120)
    assert outcome and outcome[0].complete and outcome[0].replica == "slow-0", outcome
    wait_for(gateway, lambda s: ready_ids(gateway, "slow") == ["slow-1"]
             and len(s["models"]["slow"]["pools"]["mixed"]["replicas"]) == 1, 60,
             "slow-0 to stop after its stream")
