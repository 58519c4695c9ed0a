"""The access log on a real gateway (`llmgw up`, fake engines it launches): every request,
whatever way it ends, leaves exactly one JSON line with its ids, model, replica, status,
tokens and timings, and no line holds a key, a prompt or an answer."""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from llmgw.tenancy.keys import hash_key
from tests.support import Server, check_like_llmgw, free_port, wait_until

KEY = "llmgw-" + secrets.token_hex(16)
LIMITED = "llmgw-" + secrets.token_hex(16)
PROMPT = "the-prompt-must-not-be-logged"
FIELDS = {"time", "request_id", "id", "endpoint", "model", "adapter", "stream", "replica",
          "policy", "pd_path", "prefill_replica", "tenant", "status", "outcome", "error",
          "prompt_tokens", "completion_tokens", "cached_tokens", "ttft_ms", "latency_ms"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    tmp = tmp_path_factory.mktemp("access")
    log = tmp / "access.log"
    config = {
        "server": {"state_dir": str(tmp / "state"), "access_log": {"enabled": True,
                                                                   "path": str(log)}},
        "models": [{"name": "fake", "engine": "fake", "model": "fake", "replicas": 1,
                    "routing": "least-load", "engine_args": {"token_delay_ms": 20}}],
        "auth": {"keys": [{"name": "team-a", "hash": hash_key(KEY)},
                          {"name": "limited", "hash": hash_key(LIMITED), "rpm": 1}]},
    }
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    check_like_llmgw([path])
    port = free_port()
    server = Server([sys.executable, "-m", "llmgw", "up", str(path), "--port", str(port)],
                    port, "/ready", timeout_s=60)
    yield server, log
    server.stop()


def post(server: Server, request_id: str, body: object, key: str | None = KEY,
         model: str = "fake") -> httpx.Response:
    headers = {"x-request-id": request_id}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    if isinstance(body, bytes):
        return httpx.post(server.url + "/v1/chat/completions", content=body,
                          headers={**headers, "content-type": "application/json"}, timeout=30)
    return httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers,
                      timeout=30)


def chat(model: str = "fake", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": 4, **extra}


def leave_mid_stream(server: Server, request_id: str) -> None:
    """Read the first event of a long stream, then hang up."""
    body = chat(max_tokens=500, stream=True)
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30,
                      headers={"x-request-id": request_id,
                               "authorization": f"Bearer {KEY}"}) as response:
        assert response.status_code == 200
        next(response.iter_lines())


def lines(log: Path) -> list[dict[str, object]]:
    text = log.read_text() if log.exists() else ""
    return [json.loads(line) for line in text.splitlines()]


def test_each_request_leaves_one_line_with_its_fields_and_no_secret(
        gateway: tuple[Server, Path]) -> None:
    server, log = gateway
    assert post(server, "r-ok", chat()).status_code == 200
    streamed = post(server, "r-stream", chat(stream=True))
    assert streamed.status_code == 200 and "data: [DONE]" in streamed.text
    assert post(server, "r-400", b"{not json").status_code == 400
    assert post(server, "r-404", chat(model="no-such-model")).status_code == 404
    assert post(server, "r-401", chat(), key=None).status_code == 401
    assert post(server, "r-limited", chat(), key=LIMITED).status_code == 200
    assert post(server, "r-429", chat(), key=LIMITED).status_code == 429
    leave_mid_stream(server, "r-499")
    # The writer thread and the gateway noticing the hang-up are outside this process.
    wait_until(lambda: len(lines(log)) >= 8, 30, "eight access log lines")
    records = lines(log)
    by_id = {str(r["request_id"]): r for r in records}
    assert len(records) == 8 and len(by_id) == 8, records
    assert all(set(r) == FIELDS for r in records)

    ok = by_id["r-ok"]
    assert {k: ok[k] for k in ("endpoint", "model", "adapter", "stream", "replica", "policy",
                               "pd_path", "tenant", "status", "outcome", "error",
                               "completion_tokens", "ttft_ms")} == {
        "endpoint": "chat", "model": "fake", "adapter": None, "stream": False,
        "replica": "fake-0", "policy": "least-load", "pd_path": None, "tenant": "team-a",
        "status": 200, "outcome": "ok", "error": None, "completion_tokens": 4,
        "ttft_ms": None}
    assert isinstance(ok["prompt_tokens"], int) and ok["prompt_tokens"] > 0
    assert isinstance(ok["latency_ms"], float) and ok["latency_ms"] > 0
    assert ok["id"] != "r-ok" and len(str(ok["id"])) == 24  # the gateway's own id

    stream = by_id["r-stream"]
    assert (stream["stream"], stream["status"], stream["outcome"],
            stream["completion_tokens"]) == (True, 200, "ok", 4)
    assert isinstance(stream["ttft_ms"], float)
    assert 0 < stream["ttft_ms"] <= stream["latency_ms"]  # type: ignore[operator]

    expected = {  # request id -> (status, outcome, error, model, tenant, replica)
        "r-400": (400, "client_error", "invalid_request_error", None, "team-a", None),
        "r-404": (404, "client_error", "model_not_found", None, "team-a", None),
        "r-401": (401, "client_error", "invalid_api_key", None, None, None),
        "r-limited": (200, "ok", None, "fake", "limited", "fake-0"),
        "r-429": (429, "client_error", "rate_limit_exceeded", "fake", "limited", None),
        "r-499": (499, "cancelled", None, "fake", "team-a", "fake-0"),
    }
    assert {rid: (by_id[rid]["status"], by_id[rid]["outcome"], by_id[rid]["error"],
                  by_id[rid]["model"], by_id[rid]["tenant"], by_id[rid]["replica"])
            for rid in expected} == expected

    text = log.read_text()
    for secret in (KEY, LIMITED, hash_key(KEY), PROMPT, "tok0", "{not json"):
        assert secret not in text
