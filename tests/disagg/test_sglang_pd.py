"""Prefill-decode disaggregation on SGLang, through a real gateway process.

SGLang needs a GPU, so the engines here are tests/fakes/sglang_pd.py: a fake of SGLang's
GPU-only server in ``--disaggregation-mode prefill|decode`` that follows its protocol
(bootstrap host / port / room in both legs, the decode side fetching the room's KV from
the prefill server's bootstrap port, aborts by ``rid``). The real engine runs on a GPU
machine with configs/disagg-gpu.yaml.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from llmgw.engines.stats import parse_samples
from tests.support import Server, free_port, start_gateway, wait_until

SERVED = "deepseek-ai/DeepSeek-V3"
PREFILL_TIMEOUT_S = 3.0


class Fleet:
    """Two fake prefill servers, one fake decode server, the gateway in front."""

    def __init__(self, tmp: Any) -> None:
        self.ports = {"p0": (free_port(), free_port()), "p1": (free_port(), free_port()),
                      "d0": (free_port(), 0)}
        self.servers: dict[str, Server] = {}
        for name in self.ports:
            self.start(name)
        config = {
            "health": {"interval_s": 0.5, "timeout_s": 2},
            "models": [{
                "name": "ds", "engine": "sglang", "served_model_name": SERVED,
                "disaggregation": {
                    "prefill": {"url": [self.servers["p0"].url, self.servers["p1"].url],
                                "bootstrap_port": [self.ports["p0"][1], self.ports["p1"][1]]},
                    "decode": {"url": self.servers["d0"].url},
                    "prefill_timeout_s": PREFILL_TIMEOUT_S}}]}
        self.gateway = start_gateway(config, tmp)

    def start(self, name: str) -> None:
        port, bootstrap = self.ports[name]
        mode = "prefill" if name.startswith("p") else "decode"
        argv = [sys.executable, "-m", "tests.fakes.sglang_pd", "--port", str(port),
                "--served-model-name", SERVED, "--token-delay-ms", "10", "--enable-metrics",
                "--disaggregation-mode", mode, "--bootstrap-timeout-s", "20"]
        if bootstrap:
            argv += ["--disaggregation-bootstrap-port", str(bootstrap)]
        self.servers[name] = Server(argv, port, "/v1/models", timeout_s=30,
                                    env={"SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION": "0"})

    def report(self, name: str) -> dict[str, Any]:
        return dict(httpx.get(self.servers[name].url + "/fake/pd", timeout=5).json())

    def sample(self, name: str, metric: str) -> float:
        text = httpx.get(self.servers[name].url + "/metrics", timeout=5).text
        return parse_samples(text).get(metric, 0.0)

    def gateway_gauge(self, prefix: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1])
                   for line in httpx.get(self.gateway.url + "/metrics").text.splitlines()
                   if line.startswith(prefix))

    def healthy(self, replica: str) -> float:
        return self.gateway_gauge(f'llmgw_replica_healthy{{model="ds",replica="{replica}"}}')

    def stop(self) -> None:
        for server in [self.gateway, *self.servers.values()]:
            os.killpg(server.proc.pid, signal.SIGCONT) if server.proc.poll() is None else None
            server.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path_factory.mktemp("sglang-pd"))
    yield fleet
    fleet.stop()


@pytest.fixture
def client(fleet: Fleet) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fleet.gateway.url + "/v1", api_key="x", max_retries=0) as c:
        yield c


def chat(content: str = "one two three", **extra: Any) -> dict[str, Any]:
    return {"model": "ds", "messages": [{"role": "user", "content": content}],
            "max_tokens": 5, **extra}


def pair_of_last_request(fleet: Fleet, prefills: tuple[str, ...] = ("p0", "p1")
                         ) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The bootstrap fields the decode server and the prefill server it paired with saw."""
    decode = fleet.report("d0")["seen"][-1]
    for name in prefills:
        seen = fleet.report(name)["seen"]
        if seen and seen[-1]["bootstrap_room"] == decode["bootstrap_room"]:
            return seen[-1], decode, name
    raise AssertionError(f"no prefill server saw room {decode['bootstrap_room']}")


@pytest.mark.parametrize("stream", [False, True], ids=["non-streaming", "streaming"])
def test_both_legs_get_the_same_bootstrap_fields_and_the_answer_comes_from_decode(
        fleet: Fleet, stream: bool) -> None:
    raw = httpx.post(fleet.gateway.url + "/v1/chat/completions",
                     json=chat(stream=stream), headers={"x-llmgw-explain": "1"}, timeout=30)
    assert raw.status_code == 200
    route = orjson.loads(raw.headers["x-llmgw-route"])
    if stream:
        events = [e.removeprefix("data: ") for e in raw.text.split("\n\n") if e.strip()]
        assert events[-1] == "[DONE]"
        text = "".join(orjson.loads(e)["choices"][0]["delta"].get("content") or ""
                       for e in events[:-1] if orjson.loads(e)["choices"])
    else:
        text = raw.json()["choices"][0]["message"]["content"]
    assert text == "tok0 tok1 tok2 tok3 tok4"
    prefill, decode, name = pair_of_last_request(fleet)
    assert prefill == decode  # same host, port, room, rid and stream flag on both legs
    assert (decode["bootstrap_host"], decode["bootstrap_port"], decode["stream"]) == (
        "127.0.0.1", fleet.ports[name][1], stream)
    assert 0 <= decode["bootstrap_room"] < 2**63
    assert decode["bootstrap_room"] in fleet.report("d0")["received"]
    assert (route["replica"], route["disaggregation"]["path"],
            route["disaggregation"]["reason"], route["disaggregation"]["prefill_replica"]) == (
        "ds-decode-0", "disaggregated", "required", f"ds-prefill-{name[1]}")


def test_a_long_answer_is_not_cut_by_the_prefill_time_limit(client: openai.OpenAI) -> None:
    # 400 tokens at 10 ms each outlast prefill_timeout_s (3 s); the prefill leg ended long
    # before, so only the request's own limit (none) applies, streamed or not.
    reply = client.chat.completions.create(**chat(max_tokens=400))  # type: ignore[call-overload]
    assert len(reply.choices[0].message.content.split()) == 400
    chunks = list(client.chat.completions.create(**chat(max_tokens=400, stream=True)))  # type: ignore[call-overload]
    assert sum(len((c.choices[0].delta.content or "").split()) for c in chunks if c.choices) == 400


def test_completions_and_several_sequences_get_a_room_each(
        fleet: Fleet, client: openai.OpenAI) -> None:
    reply = client.completions.create(model="ds", prompt="alpha beta", max_tokens=3)
    assert reply.choices[0].text == "tok0 tok1 tok2"
    client.chat.completions.create(**chat(n=2))  # type: ignore[call-overload]
    prefill, decode, _ = pair_of_last_request(fleet)
    assert prefill == decode and decode["n"] == 2
    assert len(decode["bootstrap_room"]) == 2 and len(set(decode["bootstrap_room"])) == 2
    assert decode["bootstrap_host"] == ["127.0.0.1"] * 2


def test_rooms_are_fresh_per_request(fleet: Fleet, client: openai.OpenAI) -> None:
    rooms = set()
    for _ in range(4):
        client.chat.completions.create(**chat())  # type: ignore[call-overload]
        rooms.add(fleet.report("d0")["seen"][-1]["bootstrap_room"])
    assert len(rooms) == 4


def test_a_dead_prefill_server_is_skipped_and_taken_back_when_it_returns(
        fleet: Fleet, client: openai.OpenAI) -> None:
    fleet.servers["p0"].stop(signal.SIGKILL)
    try:
        for _ in range(4):  # whichever prefill server ranks first, every request succeeds
            reply = client.chat.completions.create(**chat())  # type: ignore[call-overload]
            assert reply.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4"
            assert pair_of_last_request(fleet, ("p1",))[2] == "p1"
        assert fleet.healthy("ds-prefill-0") == 0
    finally:
        fleet.start("p0")
    wait_until(lambda: fleet.healthy("ds-prefill-0") == 1, 10, "p0 back in rotation")


def test_a_hung_prefill_aborts_both_legs_and_fails_cleanly(fleet: Fleet) -> None:
    aborted = fleet.sample("d0", "sglang:num_aborted_requests_total")
    stopped = [fleet.servers[n].proc.pid for n in ("p0", "p1")]
    for pid in stopped:
        os.killpg(pid, signal.SIGSTOP)
    try:
        reply = httpx.post(fleet.gateway.url + "/v1/chat/completions",
                           json=chat(stream=True), timeout=30)
        assert reply.status_code == 504
        assert reply.json()["error"]["code"] == "upstream_timeout"
        wait_until(lambda: fleet.sample("d0", "sglang:num_aborted_requests_total") == aborted + 1,
                   10, "the decode leg to be aborted")
        assert fleet.report("d0")["tracked"] == 0
        wait_until(lambda: fleet.healthy("ds-prefill-0") == fleet.healthy("ds-prefill-1") == 0,
                   10, "the gateway to take both hung prefill servers out")
        reply = httpx.post(fleet.gateway.url + "/v1/chat/completions", json=chat(), timeout=30)
        assert (reply.status_code, reply.json()["error"]["code"]) == (503, "no_healthy_replica")
        assert "cannot serve without" in reply.json()["error"]["message"]
    finally:
        for pid in stopped:
            os.killpg(pid, signal.SIGCONT)
    wait_until(lambda: fleet.healthy("ds-prefill-0") == fleet.healthy("ds-prefill-1") == 1,
               10, "both prefill servers back")
    assert fleet.gateway_gauge("llmgw_replica_in_flight_requests{") == 0


def _read_until(sock: socket.socket, received: bytes, done: bytes, count: int = 1) -> bytes:
    """Read the gateway's answer until ``done`` appeared ``count`` times."""
    while received.count(done) < count:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before {done!r}: {received[-300:]!r}"
        received += chunk
    return received


def _send_raw(url: str, body: dict[str, Any]) -> socket.socket:
    raw = orjson.dumps(body)
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                 b"content-type: application/json\r\n"
                 + f"content-length: {len(raw)}\r\n\r\n".encode() + raw)
    return sock


def test_a_client_leaving_mid_stream_aborts_the_decode_leg(fleet: Fleet) -> None:
    aborted = fleet.sample("d0", "sglang:num_aborted_requests_total")
    with _send_raw(fleet.gateway.url, chat(max_tokens=2000, stream=True)) as sock:
        sock.settimeout(30)
        _read_until(sock, b"", b'"content":', 4)
    wait_until(lambda: fleet.sample("d0", "sglang:num_aborted_requests_total") == aborted + 1,
               10, "the decode leg to be aborted")
    wait_until(lambda: fleet.gateway_gauge("llmgw_replica_in_flight_requests{") == 0, 10,
               "both legs released")
    assert fleet.report("d0")["tracked"] == 0


def test_a_client_leaving_while_the_prefill_hangs_aborts_both_legs(fleet: Fleet) -> None:
    aborted = fleet.sample("d0", "sglang:num_aborted_requests_total")
    stopped = [fleet.servers[n].proc.pid for n in ("p0", "p1")]
    for pid in stopped:
        os.killpg(pid, signal.SIGSTOP)
    try:
        seen = len(fleet.report("d0")["seen"])
        with _send_raw(fleet.gateway.url, chat(stream=True)):
            wait_until(lambda: fleet.gateway_gauge("llmgw_replica_in_flight_requests{") == 2,
                       5, "both legs to be sent")
            wait_until(lambda: fleet.report("d0")["tracked"] == 1
                       and len(fleet.report("d0")["seen"]) == seen + 1, 5,
                       "the decode server to wait for the KV")
        wait_until(lambda: fleet.sample("d0", "sglang:num_aborted_requests_total")
                   == aborted + 1, 10, "the decode leg to be aborted")
    finally:
        for pid in stopped:
            os.killpg(pid, signal.SIGCONT)
    wait_until(lambda: fleet.gateway_gauge("llmgw_replica_in_flight_requests{") == 0, 10,
               "both legs released")
    # The decode server forgot the request. The frozen prefill server could not take the
    # abort sent meanwhile: it ends the request at its bootstrap timeout, as SGLang does.
    assert fleet.report("d0")["tracked"] == 0


def test_a_decode_server_killed_mid_stream_ends_the_stream_cleanly_and_comes_back(
        fleet: Fleet, client: openai.OpenAI) -> None:
    with _send_raw(fleet.gateway.url, chat(max_tokens=2000, stream=True)) as sock:
        sock.settimeout(30)
        received = _read_until(sock, b"", b'"content":', 4)
        fleet.servers["d0"].stop(signal.SIGKILL)
        received = _read_until(sock, received, b"data: [DONE]")
    assert b'data: {"error":' in received
    reply = httpx.post(fleet.gateway.url + "/v1/chat/completions", json=chat(), timeout=30)
    assert reply.status_code in (502, 503)
    assert reply.json()["error"]["code"] in ("upstream_unreachable", "no_healthy_replica")
    fleet.start("d0")
    wait_until(lambda: fleet.healthy("ds-decode-0") == 1, 10, "the decode server back")
    reply = client.chat.completions.create(**chat())  # type: ignore[call-overload]
    assert reply.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4"
    wait_until(lambda: fleet.gateway_gauge("llmgw_replica_in_flight_requests{") == 0, 10,
               "every leg released")


def test_pd_metrics_count_the_path(fleet: Fleet) -> None:
    text = httpx.get(fleet.gateway.url + "/metrics").text
    assert parse_samples(text).get("llmgw_pd_requests_total", 0) >= 10
    assert 'llmgw_pd_requests_total{model="ds",path="disaggregated",reason="required"}' in text
    assert 'llmgw_pd_leg_duration_seconds_count{leg="prefill",model="ds"}' in text
    assert 'llmgw_pd_decode_first_token_seconds_count{model="ds"}' in text
