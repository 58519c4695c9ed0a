"""Helpers for tests of a fleet that changes at run time: the admin API, waiting for the
fleet to converge, and bounded load that records every outcome."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support import ClosedLoop, Server, check_like_llmgw, wait_until

ADMIN_KEY = "fleet-test-key"
AUTH = {"authorization": f"Bearer {ADMIN_KEY}"}


def up(config_file: Path, timeout_s: float = 180) -> Server:
    """`llmgw up FILE` on the port the file names: a reload re-reads this same file."""
    check_like_llmgw([config_file])
    port = yaml.safe_load(config_file.read_text())["server"]["port"]
    return Server([sys.executable, "-m", "llmgw", "up", str(config_file)], port, "/ready",
                  timeout_s=timeout_s)


def status(gateway: Server) -> dict[str, Any]:
    response = httpx.get(gateway.url + "/admin/status", headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def ready_ids(gateway: Server, model: str, pool: str = "mixed") -> list[str]:
    pools = status(gateway)["models"].get(model, {}).get("pools", {})
    return sorted(r["id"] for r in pools.get(pool, {}).get("replicas", [])
                  if r["state"] == "ready" and r["healthy"])


def wait_for(gateway: Server, check: Callable[[dict[str, Any]], bool], timeout_s: float,
             what: str) -> dict[str, Any]:
    """Poll /admin/status until ``check`` holds (the fleet is an outside process)."""
    seen: dict[str, Any] = {}

    def ok() -> bool:
        seen.update(status(gateway))
        return check(seen)

    try:
        wait_until(ok, timeout_s, what)
    except AssertionError:
        raise AssertionError(f"{what}; last status: {seen}\n{gateway.output()[-3000:]}") \
            from None
    return seen


def reload(gateway: Server) -> httpx.Response:
    return httpx.post(gateway.url + "/admin/reload", headers=AUTH, timeout=30)


def chat(model: str, max_tokens: int = 8, **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "hello there"}], **extra}


@dataclass
class Outcome:
    status: int
    replica: str | None
    complete: bool  # a stream ended with a finish_reason and [DONE]
    error: str = ""


class Load(ClosedLoop[Outcome]):
    """Closed-loop load on a gateway from ``workers`` threads, each sending requests one
    after another until ``stop()`` (or ``max_requests`` in all). Every outcome is kept."""

    def __init__(self, url: str, body: Callable[[int], dict[str, Any]], workers: int = 2,
                 max_requests: int = 2000) -> None:
        super().__init__(lambda client, n: send(client, url, body(n)), workers,
                         max_requests, timeout_s=120)

    @property
    def outcomes(self) -> list[Outcome]:
        return self.results


def send(client: httpx.Client, url: str, body: dict[str, Any]) -> Outcome:
    try:
        if not body.get("stream"):
            response = client.post(url + "/v1/chat/completions", json=body)
            return Outcome(response.status_code, response.headers.get("x-llmgw-replica"),
                           response.status_code == 200, "" if response.status_code == 200
                           else response.text[:300])
        with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
            text = "".join(response.iter_text())
            finished = stream_finished(text)
            return Outcome(response.status_code, response.headers.get("x-llmgw-replica"),
                           finished, "" if finished else text[-300:])
    except httpx.HTTPError as exc:
        return Outcome(0, None, False, repr(exc))


def stream_finished(text: str) -> bool:
    """An SSE answer that ran to its end: a chunk with a finish_reason, no error event,
    then ``[DONE]``."""
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        return False
    chunks = [json.loads(e) for e in events[:-1]]
    return not any("error" in c for c in chunks) and any(
        choice.get("finish_reason") for c in chunks for choice in c.get("choices", []))


def failures(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.status != 200 or not o.complete]


def wait_for_requests(load: Load, count: int, timeout_s: float = 120) -> None:
    """Until ``count`` more requests finished (the load runs in other threads)."""
    load.wait_for(count, timeout_s)


def metric(gateway: Server, name: str, **labels: str) -> float | None:
    """One sample of the gateway's /metrics, or None when the series does not exist."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    for line in httpx.get(gateway.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{") and all(w in line for w in want):
            return float(line.rsplit(" ", 1)[1])
        if line.startswith(name + " ") and not want:
            return float(line.rsplit(" ", 1)[1])
    return None
