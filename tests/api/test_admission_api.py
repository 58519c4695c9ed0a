"""Admission of a saturated model, through a real gateway over a launched fake engine:
a request waits at the gateway while the model's one slot is taken, interactive keys go
before batch keys, a full queue sheds the batch request with 503 + Retry-After, and a key
revoked while its request waits gets 401 instead of the engine."""

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
ADMIN_KEY = "admin-secret"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("admission")
    model = {"engine": "fake", "model": "fake", "replicas": 1,
             "engine_args": {"token_delay_ms": 20}}
    server = start_gateway({
        "server": {"state_dir": str(tmp / "state"), "admin_key": ADMIN_KEY},
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
    """``key``: a name in KEYS, or a key itself."""
    return httpx.post(server.url + "/v1/chat/completions", timeout=30,
                      headers={"authorization": f"Bearer {KEYS.get(key, key)}"},
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


def test_a_key_revoked_while_its_request_waits_is_refused(gateway: Server) -> None:
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    made = httpx.post(gateway.url + "/admin/keys", headers=admin, json={"name": "doomed"})
    assert made.status_code == 201, made.text
    holder = hold(gateway, "fair")
    next(holder)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(post, gateway, "fair", made.json()["key"])
        wait_until(lambda: queued(gateway, "fair") == 1, 10, "the request to queue")
        assert httpx.delete(gateway.url + "/admin/keys/doomed",
                            headers=admin).status_code == 200
        holder.close()  # the slot frees: the waiter is let through on a revoked key
        refused = waiting.result()
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert 'llmgw_auth_failures_total{reason="revoked"} 1.0' in \
        httpx.get(gateway.url + "/metrics").text
