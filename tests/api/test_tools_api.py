"""Tools through a real gateway process: worker processes (replicas: N) and the in-process
instance (replicas: 0), least-load routing, argument validation, errors, dynamic
batching, and a killed worker. The tool classes are tests/fakes/tools.py."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support import Server, start_gateway, wait_until

ADMIN = "tools-admin-key"
RECORDER = "tests.fakes.tools:Recorder"


@pytest.fixture(scope="module")
def gates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gates")


@pytest.fixture(scope="module")
def gateway(gates: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = {
        "server": {"admin_key": ADMIN},
        "health": {"interval_s": 0.2},
        "models": [{"name": "fake", "engine": "fake", "model": "fake", "replicas": 1}],
        "tools": [
            {"name": "rec", "import_path": RECORDER, "replicas": 2,
             "init_args": {"tag": "worker", "gate": str(gates / "rec")}},
            {"name": "loc", "import_path": RECORDER, "replicas": 0, "timeout_s": 1,
             "init_args": {"tag": "local", "gate": str(gates / "never")}},
            {"name": "bat", "import_path": RECORDER, "replicas": 1,
             "batch": {"square": {"max_batch_size": 4, "batch_wait_timeout_s": 30}}},
            {"name": "kill", "import_path": RECORDER, "replicas": 1,
             "init_args": {"gate": str(gates / "never")}},
        ],
    }
    server = start_gateway(config, tmp_path_factory.mktemp("gw"))
    yield server
    server.stop()


def call(server: Server, tool: str, arguments: Any, **extra: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/tools/{tool}", json={"arguments": arguments, **extra},
                      timeout=60)


def metric(server: Server, sample: str) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def concurrently(server: Server, tool: str, arguments: list[Any]) -> list[httpx.Response]:
    with ThreadPoolExecutor(len(arguments)) as pool:
        return list(pool.map(lambda a: call(server, tool, a), arguments))


def test_list_is_openai_function_tools_a_chat_completion_takes(gateway: Server) -> None:
    listed = httpx.get(gateway.url + "/v1/tools").json()
    assert listed["object"] == "list"
    names = [t["function"]["name"] for t in listed["data"]]
    assert names[:7] == ["rec_echo", "rec_add", "rec_fail", "rec_slow", "rec_square",
                         "rec_short", "rec_batch_sizes"]
    assert len(names) == 28  # four deployments of seven tools, in config order
    echo = listed["data"][0]
    assert echo == {"type": "function", "function": {
        "name": "rec_echo", "description": "Echo a text back.", "parameters": {
            "type": "object", "additionalProperties": False, "required": ["text"],
            "properties": {"text": {"type": "string", "title": "Text",
                                    "description": "What to echo"},
                           "times": {"type": "integer", "title": "Times", "default": 1}}}}}
    # The list goes into `tools` as it is: the real client sends it, the engine gets it.
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused",
                       max_retries=0) as client:
        answer = client.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
            tools=listed["data"])
    assert answer.choices[0].message.content == "tok0 tok1"


def test_worker_and_in_process_calls(gateway: Server) -> None:
    worker = call(gateway, "rec_echo", {"text": "ab", "times": 2})
    assert worker.status_code == 200, worker.text
    output = worker.json()["output"]
    assert (output["text"], output["tag"]) == ("abab", "worker")
    assert output["pid"] != gateway.proc.pid
    assert worker.json()["content"].startswith('{"text":"abab"')
    local = call(gateway, "loc_echo", '{"text": "x"}')  # arguments as JSON text, too
    assert local.json()["output"]["pid"] == gateway.proc.pid
    # A sync method in the gateway runs in a thread, never on the event loop's.
    assert local.json()["output"]["on_loop_thread"] is False
    assert call(gateway, "rec_add", {"point": {"x": 2, "y": 3}}).json()["output"] == 5


def test_calls_go_to_the_least_loaded_worker(gateway: Server, gates: Path) -> None:
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(call, gateway, "rec_slow", {"marker": str(i)}) for i in range(2)]
        wait_until(lambda: metric(gateway, 'llmgw_tool_in_flight_calls{deployment="rec"}')
                   == 2, 30, "two calls in flight")
        (gates / "rec").touch()
        answers = [f.result() for f in held]
    assert [a.status_code for a in answers] == [200, 200]
    assert len({a.json()["output"] for a in answers}) == 2  # one on each worker


@pytest.mark.parametrize(("tool", "body", "status", "param", "message"), [
    ("rec_echo", {"arguments": {"text": 3}}, 400, "text",
     "tool 'rec_echo': text: Input should be a valid string"),
    ("rec_echo", {"arguments": {}}, 400, "text", "tool 'rec_echo': text: Field required"),
    ("rec_add", {"arguments": {"point": {"y": 1}}}, 400, "point.x",
     "tool 'rec_add': point.x: Field required"),
    ("loc_echo", {"arguments": "{nope"}, 400, None, "tool 'loc_echo': Invalid JSON"),
    ("rec_echo", {"args": {}}, 400, "args", "args: Extra inputs are not permitted"),
    ("nope", {"arguments": {}}, 404, "name", "no tool named 'nope'"),
], ids=["wrong-type", "missing", "nested", "bad-json-text", "bad-body", "unknown-tool"])
def test_refused_calls_are_openai_errors_naming_the_field(
    gateway: Server, tool: str, body: dict[str, Any], status: int, param: str | None,
    message: str,
) -> None:
    answer = httpx.post(f"{gateway.url}/v1/tools/{tool}", json=body)
    assert answer.status_code == status
    error = answer.json()["error"]
    assert (error["param"], error["type"]) == (param, "invalid_request_error")
    assert error["message"].startswith(message), error["message"]


@pytest.mark.parametrize("tool", ["rec_fail", "loc_fail"])
def test_a_tool_that_raises_is_a_tool_error_with_its_message(gateway: Server,
                                                             tool: str) -> None:
    answer = call(gateway, tool, {"message": "no such city"})
    assert answer.status_code == 500
    assert answer.json()["error"] == {
        "message": f"tool '{tool}' failed: ValueError: no such city", "type": "server_error",
        "param": None, "code": "tool_error"}


def test_a_call_past_timeout_s_is_a_504(gateway: Server) -> None:
    answer = call(gateway, "loc_slow", {"marker": "x"})
    assert answer.status_code == 504
    assert answer.json()["error"]["code"] == "tool_timeout"


def test_dynamic_batching_sizes_wait_bound_and_error_fan_out(gateway: Server) -> None:
    # max_batch_size 4, a 30 s wait: eight calls at once run as two full batches.
    answers = concurrently(gateway, "bat_square", [{"n": i} for i in range(8)])
    assert [a.json()["output"] for a in answers] == [i * i for i in range(8)]
    assert call(gateway, "bat_batch_sizes", {}).json()["output"] == [4, 4]
    # Bounds change at run time: a lone call now runs after the wait, in a batch of one.
    bounds = httpx.post(gateway.url + "/admin/tools/bat_square/batch",
                        json={"batch_wait_timeout_s": 0.01}, headers=_admin())
    assert bounds.json() == {"tool": "bat_square", "batch_wait_timeout_s": 0.01}
    assert call(gateway, "bat_square", {"n": 3}).json()["output"] == 9
    assert call(gateway, "bat_batch_sizes", {}).json()["output"] == [4, 4, 1]
    # One bad item fails every call of its batch, with the batch's error.
    httpx.post(gateway.url + "/admin/tools/bat_square/batch",
               json={"batch_wait_timeout_s": 30}, headers=_admin())
    failed = concurrently(gateway, "bat_square", [{"n": -1}, {"n": 1}, {"n": 2}, {"n": 3}])
    assert {a.status_code for a in failed} == {500}
    (message,) = {a.json()["error"]["message"] for a in failed}  # one error for all four
    prefix = "tool 'bat_square' failed: ValueError: negative number in batch "
    assert message.startswith(prefix)
    assert sorted(json.loads(message.removeprefix(prefix))) == [-1, 1, 2, 3]  # arrival order
    short = call(gateway, "bat_short", {"n": 1})
    assert short.json()["error"]["message"] == (
        "tool 'bat_short' failed: BatchSizeMismatch: batched method Recorder.short returned "
        "0 results for a batch of 1 calls (it must return a list of the same length)")
    assert metric(gateway, 'llmgw_tool_batch_size_count{tool="bat_square"}') == 9
    assert metric(gateway, 'llmgw_tool_calls_total{outcome="error",tool="bat_square"}') == 4


def test_batch_bounds_route_is_admin_only_and_checked(gateway: Server) -> None:
    url = gateway.url + "/admin/tools/bat_square/batch"
    assert httpx.post(url, json={"max_batch_size": 2}).status_code == 401
    bad = httpx.post(url, json={"max_batch_size": 0}, headers=_admin())
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "max_batch_size")
    plain = httpx.post(gateway.url + "/admin/tools/bat_echo/batch", json={}, headers=_admin())
    assert plain.json()["error"]["message"] == "tool 'bat_echo' is not batched"


def test_killed_worker_fails_its_calls_clearly_and_is_replaced(gateway: Server) -> None:
    pid = call(gateway, "kill_echo", {"text": "x"}).json()["output"]["pid"]
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(call, gateway, "kill_slow", {"marker": "x"})
        wait_until(lambda: metric(gateway, 'llmgw_tool_in_flight_calls{deployment="kill"}')
                   == 1, 30, "the call in flight")
        os.kill(pid, signal.SIGKILL)
        lost = held.result()
    assert lost.status_code == 502
    assert lost.json()["error"] == {
        "message": "tool 'kill_slow': worker kill-0 went away during the call (not retried: "
                   "a tool need not be idempotent)",
        "type": "server_error", "param": None, "code": "tool_worker_lost"}
    # Out of rotation until its restart passes a health check, then serving again.
    wait_until(lambda: call(gateway, "kill_echo", {"text": "x"}).status_code == 200, 60,
               "the restarted worker")
    assert call(gateway, "kill_echo", {"text": "x"}).json()["output"]["pid"] != pid
    # Counted once the launcher has seen the new process ready, which may come a moment
    # after the tool set's own health check let it serve.
    wait_until(lambda: metric(gateway, 'llmgw_tool_replica_restarts_total{deployment="kill",'
                                       'replica="kill-0"}') == 1, 30, "the restart counted")


def _admin() -> dict[str, str]:
    return {"authorization": f"Bearer {ADMIN}"}
