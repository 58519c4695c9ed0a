"""Chaos tests: a real gateway in front of three real fake-engine processes, one of
which is killed or frozen under bounded streaming load that records every outcome."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import ClosedLoop, Server, start_fake_engine, start_gateway, wait_until

ADMIN_KEY = "chaos-test-key"


@dataclass
class Fleet:
    gateway: Server
    engines: dict[str, Server]  # replica id -> its engine process

    def metric(self, name: str, **labels: str) -> float | None:
        want = [f'{k}="{v}"' for k, v in labels.items()]
        for line in httpx.get(self.gateway.url + "/metrics", timeout=10).text.splitlines():
            if line.startswith(name + "{") and all(w in line for w in want):
                return float(line.rsplit(" ", 1)[1])
        return None

    def wait(self, check: Callable[[], bool], timeout_s: float, what: str) -> None:
        """wait_until, failing with the gateway's log."""
        try:
            wait_until(check, timeout_s, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.gateway.output()[-4000:]}") from None

    def replicas(self) -> dict[str, dict[str, Any]]:
        response = httpx.get(self.gateway.url + "/admin/status", timeout=10,
                             headers={"authorization": f"Bearer {ADMIN_KEY}"})
        assert response.status_code == 200, response.text
        pools = response.json()["models"]["fake"]["pools"]
        return {r["id"]: r for pool in pools.values() for r in pool["replicas"]}


def start_fleet(tmp: Path, outlier: dict[str, Any], timeouts: dict[str, Any],
                health: dict[str, Any], routing: str = "least-load") -> Fleet:
    engines = [start_fake_engine("--token-delay-ms", "20") for _ in range(3)]
    try:
        config = {
            "server": {"admin_key": ADMIN_KEY},
            "health": {"interval_s": 0.3, **health, "outlier": outlier},
            "models": [{"name": "fake", "engine": "openai", "url": [e.url for e in engines],
                        "timeouts": timeouts, "routing": routing}],
        }
        gateway = start_gateway(config, tmp)
    except BaseException:
        for engine in engines:
            engine.stop()
        raise
    fleet = Fleet(gateway, {})
    try:
        wait_until(lambda: all(r["healthy"] for r in fleet.replicas().values()), 30,
                   "every replica healthy")
        by_url = {e.url: e for e in engines}
        fleet.engines = {rid: by_url[r["url"]] for rid, r in fleet.replicas().items()}
    except BaseException:
        stop_fleet(fleet, engines)
        raise
    return fleet


def stop_fleet(fleet: Fleet, engines: list[Server] | None = None) -> None:
    for engine in engines or list(fleet.engines.values()):
        if engine.proc.poll() is None:
            os.kill(engine.proc.pid, signal.SIGCONT)  # a frozen one cannot take SIGTERM
        engine.stop()
    fleet.gateway.stop()


@pytest.fixture
def fleet_factory(tmp_path: Path) -> Iterator[Any]:
    fleets: list[Fleet] = []

    def make(**kwargs: Any) -> Fleet:
        fleets.append(start_fleet(tmp_path, **kwargs))
        return fleets[-1]

    yield make
    for fleet in fleets:
        stop_fleet(fleet)


@dataclass
class Result:
    """One streaming request as its client saw it."""

    status: int  # 0: no response at all (connection error)
    replica: str | None
    events: list[str]  # the SSE data payloads, in order
    error: str = ""

    @property
    def got_bytes(self) -> bool:
        return self.status != 0

    @property
    def finished(self) -> bool:
        """Ran to its end: a finish_reason, no error event, then [DONE]."""
        if self.status != 200 or not self.events or self.events[-1] != "[DONE]":
            return False
        chunks = [json.loads(e) for e in self.events[:-1]]
        return not any("error" in c for c in chunks) and any(
            choice.get("finish_reason") for c in chunks for choice in c.get("choices", []))

    @property
    def ended_with_error_event(self) -> bool:
        """Cut mid-stream the way the gateway must: an error event, then [DONE]."""
        return (self.status == 200 and len(self.events) >= 2 and self.events[-1] == "[DONE]"
                and set(json.loads(self.events[-2])) == {"error"})


def stream(client: httpx.Client, url: str, max_tokens: int) -> Result:
    body = {"model": "fake", "stream": True, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "hello"}]}
    try:
        with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
            text = "".join(response.iter_text())
            events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
            return Result(response.status_code, response.headers.get("x-llmgw-replica"),
                          events, "" if response.status_code == 200 else text[:300])
    except httpx.HTTPError as exc:
        return Result(0, None, [], repr(exc))


class StreamLoad(ClosedLoop[Result]):
    """Closed-loop streaming load from ``workers`` threads, at most ``max_requests`` in
    all, every result kept in completion order."""

    def __init__(self, url: str, max_tokens: int = 10, workers: int = 4,
                 max_requests: int = 3000) -> None:
        super().__init__(lambda client, n: stream(client, url, max_tokens), workers,
                         max_requests, timeout_s=30)

    def wait_for(self, more: int, timeout_s: float = 30) -> None:
        super().wait_for(more, timeout_s)
