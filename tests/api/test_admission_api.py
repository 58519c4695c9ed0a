"""Admission of a saturated model, through a real gateway over a launched fake engine:
a request waits at the gateway while the model's one slot is taken, interactive keys go
before batch keys, and a full queue sheds the batch request with 503 + Retry-After."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import openai
import pytest

from llmgw.tenancy.keys import hash_key
from tests.support import Server, start_gateway, wait_until

KEYS = {"interactive": "llmgw-test-interactive", "batch": "llmgw-test-batch"}
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("admission")
    model = {"engine": "fake", "model": "fake", "replicas": 1,
             "engine_args": {"token_delay_ms": 20}}
    server = start_gateway({
        "server": {"state_dir": str(tmp / "state")},
        "models": [
            {"name": "fair", **model, "admission": {"max_in_flight_per_replica": 1}},
            {"name": "tight", **model, "admission": {"max_in_flight_per_replica": 1,
                                                     "max_queued": 1}}],
        "auth": {"keys": [{"name": name, "hash": hash_key(secret), "priority": name}
                          for name, secret in KEYS.items()]},
    }, tmp, timeout_s=60)
    yield server
    server.stop()


def queued(server: Server, model: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    found = re.search(rf'llmgw_admission_queued_requests{{model="{model}"}} (\S+)', text)
    return float(found.group(1)) if found else 0.0


def waited(server: Server, model: str, key: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    found = re.search(rf'llmgw_admission_wait_seconds_sum{{key="{key}",model="{model}"}} '
                      r"(\S+)", text)
    assert found, text
    return float(found.group(1))


def post(server: Server, model: str, key: str) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", timeout=30,
                      headers={"authorization": f"Bearer {KEYS[key]}"},
                      json={"model": model, "messages": HI, "max_tokens": 1})


def hold(server: Server, model: str) -> Iterator[None]:
    """Take the model's one slot with a stream until the generator is closed."""
    with openai.OpenAI(base_url=server.url + "/v1", api_key=KEYS["interactive"],
                       max_retries=0) as client, client.chat.completions.create(
            model=model, messages=HI, max_tokens=500, stream=True) as stream:  # type: ignore[arg-type]
        next(iter(stream))
        yield


def test_interactive_waits_less_than_batch(gateway: Server) -> None:
    holder = hold(gateway, "fair")
    next(holder)
    with ThreadPoolExecutor(2) as pool:
        batch: Future[httpx.Response] = pool.submit(post, gateway, "fair", "batch")
        wait_until(lambda: queued(gateway, "fair") == 1, 10, "the batch request to queue")
        interactive = pool.submit(post, gateway, "fair", "interactive")
        wait_until(lambda: queued(gateway, "fair") == 2, 10, "both requests to queue")
        holder.close()  # the slot frees: interactive first, batch once it is done
        assert (interactive.result().status_code, batch.result().status_code) == (200, 200)
    assert waited(gateway, "fair", "batch") > waited(gateway, "fair", "interactive")


def test_a_full_queue_sheds_batch_for_interactive(gateway: Server) -> None:
    holder = hold(gateway, "tight")
    next(holder)
    with ThreadPoolExecutor(2) as pool:
        batch = pool.submit(post, gateway, "tight", "batch")
        wait_until(lambda: queued(gateway, "tight") == 1, 10, "the batch request to queue")
        interactive = pool.submit(post, gateway, "tight", "interactive")
        shed = batch.result()
        assert shed.status_code == 503 and shed.headers["retry-after"] == "1"
        assert shed.json()["error"]["code"] == "model_saturated"
        holder.close()
        assert interactive.result().status_code == 200
    assert 'llmgw_admission_shed_total{model="tight",priority="batch",reason="queue_full"} ' \
           '1.0' in httpx.get(gateway.url + "/metrics").text
