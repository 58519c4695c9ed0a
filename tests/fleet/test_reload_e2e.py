"""Reload while traffic flows, against a real gateway launching real embedded engines:
a model added, one removed and one rolled to new engine settings under load lose no
request and cut no stream; afterwards only the new config's replicas run; an invalid
config leaves the old one serving; SIGHUP reloads the same way."""

from __future__ import annotations

import copy
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from tests.fleet.conftest import (
    ADMIN_KEY,
    Load,
    chat,
    failures,
    ready_ids,
    reload,
    status,
    up,
    wait_for,
    wait_for_requests,
)
from tests.support import Server, free_port

pytestmark = pytest.mark.e2e

V1: dict[str, Any] = {
    "server": {"admin_key": ADMIN_KEY, "host": "127.0.0.1"},
    "health": {"interval_s": 0.5},
    "models": [
        {"name": "alpha", "engine": "transformers", "model": "demo", "replicas": 2,
         "engine_args": {"max_batch_size": 8}, "rollout": {"drain_timeout_s": 60}},
        {"name": "beta", "engine": "transformers", "model": "demo", "replicas": 1},
    ],
}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("reload") / "gateway.yaml"
    config = copy.deepcopy(V1)
    config["server"]["port"] = free_port()
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def gateway(config_file: Path) -> Iterator[Server]:
    server = up(config_file, timeout_s=180)
    yield server
    server.stop()


def rewrite(path: Path, change: Any) -> None:
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config))


def engine_processes(gateway: Server) -> int:
    return len(psutil.Process(gateway.proc.pid).children())


def versions(gateway: Server, model: str) -> set[str]:
    pool = status(gateway)["models"][model]["pools"]["mixed"]
    return {r["version"] for r in pool["replicas"]}


def test_reload_adds_removes_and_rolls_under_load_without_failing_a_request(
        gateway: Server, config_file: Path) -> None:
    old_version = versions(gateway, "alpha")
    assert engine_processes(gateway) == 3

    def v2(config: dict[str, Any]) -> None:
        config["models"] = [
            {**config["models"][0], "engine_args": {"max_batch_size": 4}},  # roll
            {"name": "gamma", "engine": "transformers", "model": "demo", "replicas": 1},
        ]

    load = Load(gateway.url, lambda n: chat("alpha", 64, stream=n % 2 == 0, ignore_eos=True),
                workers=3, max_requests=3000).start()
    try:
        wait_for_requests(load, 6)
        rewrite(config_file, v2)
        answer = reload(gateway)
        assert answer.status_code == 200, answer.text
        plan = {m["model"]: m["actions"] for m in answer.json()["plan"]["models"]}
        assert plan == {"beta": ["remove"], "gamma": ["add"], "alpha": ["roll"]}
        wait_for(gateway, lambda s: set(s["models"]) == {"alpha", "gamma"}
                 and len(ready_ids(gateway, "alpha")) == 2
                 and versions(gateway, "alpha").isdisjoint(old_version)
                 and len(ready_ids(gateway, "gamma")) == 1
                 and not s["models"]["alpha"]["pools"]["mixed"]["starting"], 240,
                 "the fleet to converge on the new config")
        wait_for_requests(load, 6)
    finally:
        outcomes = load.stop()
    assert len(outcomes) > 20
    assert failures(outcomes) == []
    assert {o.replica for o in outcomes} >= {"alpha-0", "alpha-1", "alpha-2", "alpha-3"}
    assert engine_processes(gateway) == 3  # 2 alpha (new) + 1 gamma; beta's is gone
    served = httpx.post(gateway.url + "/v1/chat/completions", json=chat("gamma"), timeout=60)
    assert served.status_code == 200
    gone = httpx.post(gateway.url + "/v1/chat/completions", json=chat("beta"), timeout=60)
    assert gone.status_code == 404


def test_an_invalid_config_is_refused_and_the_old_one_keeps_serving(
        gateway: Server, config_file: Path) -> None:
    before = config_file.read_text()
    rewrite(config_file, lambda c: c["models"][0].update(replicas=0))
    try:
        answer = reload(gateway)
    finally:
        config_file.write_text(before)
    assert answer.status_code == 400
    assert "models[0].replicas" in answer.json()["error"]["message"]
    assert status(gateway)["reload"]["ok"] is False
    served = httpx.post(gateway.url + "/v1/chat/completions", json=chat("alpha"), timeout=60)
    assert served.status_code == 200


def test_sighup_reloads_routing_in_place(gateway: Server, config_file: Path) -> None:
    replicas = ready_ids(gateway, "alpha")
    rewrite(config_file, lambda c: c["models"][0].update(routing="round-robin"))
    gateway.proc.send_signal(signal.SIGHUP)
    wait_for(gateway, lambda s: s["reload"] is not None and s["reload"]["ok"]
             and s["reload"]["plan"]["models"] == [
                 {"model": "alpha", "actions": ["update"], "changed": ["routing"]}], 30,
             "SIGHUP to apply the routing change")
    assert ready_ids(gateway, "alpha") == replicas  # no engine restarted
    picks = {httpx.post(gateway.url + "/v1/chat/completions", json=chat("alpha"),
                        timeout=60).headers["x-llmgw-replica"] for _ in range(4)}
    assert picks == set(replicas)
