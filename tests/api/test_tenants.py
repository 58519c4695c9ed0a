"""`llmgw up configs/tenants.yaml` (two fake-engine models, two configured keys), its state
directory moved into the test's temp dir, driven by the real openai client: keys made and
revoked through the admin API, 401s, allowlists, limits with OpenAI's headers, per-key
metrics, and no secret anywhere it should not be."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.support import ROOT, Server, check_like_llmgw, free_port, wait_until

ADMIN = {"authorization": "Bearer admin-secret"}
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    tmp = tmp_path_factory.mktemp("tenants")
    override = tmp / "state.yaml"
    override.write_text(yaml.safe_dump({"server": {"state_dir": str(tmp / "state")}}))
    files = [ROOT / "configs" / "tenants.yaml", override]
    check_like_llmgw(files)
    port = free_port()
    server = Server([sys.executable, "-m", "llmgw", "up", *map(str, files), "--port",
                     str(port)], port, "/ready", timeout_s=60,
                    env={"LLMGW_ADMIN_KEY": "admin-secret"})
    yield server, tmp / "state"
    server.stop()


def reload_with(server: Server, state: Path, auth: dict[str, object]) -> dict[str, object]:
    """Rewrite the override file (beside the state dir) and POST /admin/reload."""
    override = {"server": {"state_dir": str(state)}, **({"auth": auth} if auth else {})}
    (state.parent / "state.yaml").write_text(yaml.safe_dump(override))
    response = httpx.post(server.url + "/admin/reload", headers=ADMIN, timeout=30)
    assert response.status_code == 200, response.text
    return dict(response.json()["plan"])


def make_key(server: Server, **spec: object) -> str:
    response = httpx.post(server.url + "/admin/keys", headers=ADMIN, json=spec)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == spec["name"] and "hash" not in body
    return str(body["key"])


def client(server: Server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


def chat(server: Server, key: str, model: str = "small", **extra: object) -> object:
    with client(server, key) as c:
        return c.chat.completions.with_raw_response.create(
            model=model, messages=HI, max_tokens=4, **extra)  # type: ignore[arg-type, call-overload]


def test_without_a_valid_key_nothing_is_served(gateway: tuple[Server, Path]) -> None:
    server, _ = gateway
    with pytest.raises(openai.AuthenticationError) as caught, \
            client(server, "llmgw-wrong") as wrong:
        wrong.models.list()
    assert caught.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        chat(server, "llmgw-wrong")
    for path, method in [("/v1/models", "GET"), ("/v1/chat/completions", "POST")]:
        response = httpx.request(method, server.url + path,  # no key at all
                                 json={"model": "small", "messages": HI})
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    # the admin key is not a client key, and a client key never opens the admin API
    with pytest.raises(openai.AuthenticationError):
        chat(server, "admin-secret")
    alice = make_key(server, name="alice")
    assert httpx.get(server.url + "/admin/keys",
                     headers={"authorization": f"Bearer {alice}"}).status_code == 401
    # probes and metrics stay open
    assert httpx.get(server.url + "/ready").status_code == 200


def test_keys_are_listed_without_secrets_and_allowlists_hide_models(
        gateway: tuple[Server, Path]) -> None:
    server, state = gateway
    key = make_key(server, name="small-only", models=["small"], priority="batch")
    assert httpx.post(server.url + "/admin/keys", headers=ADMIN,
                      json={"name": "small-only"}).status_code == 409
    assert httpx.post(server.url + "/admin/keys", headers=ADMIN,
                      json={"name": "x", "models": ["nope"]}).json()["error"]["param"] == "models"
    # A limit past 64 bits was a 500 (the state file could not hold it): now a 400.
    huge = httpx.post(server.url + "/admin/keys", headers=ADMIN, json={"name": "x", "rpm": 2**73})
    assert (huge.status_code, huge.json()["error"]["param"]) == (400, "rpm")
    listing = httpx.get(server.url + "/admin/keys", headers=ADMIN).json()["data"]
    by_name = {k["name"]: k for k in listing}
    assert by_name["small-only"] == {"name": "small-only", "models": ["small"], "rpm": None,
                                     "tpm": None, "max_concurrency": None,
                                     "priority": "batch", "weight": 1.0,
                                     "origin": "runtime", "tools": None}
    assert {"team-a", "nightly-batch"} <= set(by_name)
    assert by_name["nightly-batch"]["origin"] == "config"
    assert key not in str(listing) and "sha256" not in str(listing)
    stored = (state / "keys.json").read_text()
    assert key not in stored and "sha256:" in stored

    with client(server, key) as c:
        assert [m.id for m in c.models.list().data] == ["small"]
    assert chat(server, key, "small").http_response.status_code == 200  # type: ignore[attr-defined]
    with pytest.raises(openai.NotFoundError) as hidden:
        chat(server, key, "large")
    with pytest.raises(openai.NotFoundError) as missing:
        chat(server, key, "absent")
    assert hidden.value.body == {**missing.value.body,  # type: ignore[dict-item]
                                 "message": "The model 'large' does not exist."}
    # nor does asking for an adapter of a hidden model tell that the model exists
    for model, headers in [("large:sql", {}), ("large", {"serve_multiplexed_model_id": "x"})]:
        with pytest.raises(openai.NotFoundError) as adapter:
            chat(server, key, model, extra_headers=headers)
        assert adapter.value.body["message"] == \
            f"The model '{model}' does not exist."  # type: ignore[index]


def test_revoked_keys_stop_at_once(gateway: tuple[Server, Path]) -> None:
    server, _ = gateway
    key = make_key(server, name="short-lived")
    chat(server, key)
    response = httpx.delete(server.url + "/admin/keys/short-lived", headers=ADMIN)
    assert response.json() == {"name": "short-lived", "deleted": True}
    with pytest.raises(openai.AuthenticationError):
        chat(server, key)
    assert httpx.delete(server.url + "/admin/keys/short-lived",
                        headers=ADMIN).status_code == 404


def test_requests_per_minute_with_openai_headers(gateway: tuple[Server, Path]) -> None:
    server, _ = gateway
    key = make_key(server, name="rpm-2", rpm=2)
    first = chat(server, key).http_response  # type: ignore[attr-defined]
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    chat(server, key)
    with pytest.raises(openai.RateLimitError) as caught:
        chat(server, key)
    headers = caught.value.response.headers
    assert caught.value.code == "rate_limit_exceeded"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert 25 <= int(headers["retry-after"]) <= 30  # one request back takes 30 s at 2 rpm
    # the api-key header (Azure-style SDKs) is the same key
    response = httpx.post(server.url + "/v1/chat/completions", headers={"api-key": key},
                          json={"model": "small", "messages": HI})
    assert response.status_code == 429 and response.json()["error"]["type"] == \
        "rate_limit_error"


def test_concurrency_limit_while_a_stream_is_open(gateway: tuple[Server, Path]) -> None:
    server, _ = gateway
    key = make_key(server, name="one-at-a-time", max_concurrency=1)
    with client(server, key) as c, c.chat.completions.create(
            model="small", messages=HI, max_tokens=50, stream=True) as stream:  # type: ignore[arg-type]
        next(iter(stream))  # the stream holds the key's one slot
        with pytest.raises(openai.RateLimitError, match="requests at once"):
            chat(server, key)


def test_a_client_that_leaves_mid_stream_frees_its_keys_slot(
        gateway: tuple[Server, Path]) -> None:
    server, _ = gateway
    key = make_key(server, name="leaver", max_concurrency=1)
    with client(server, key) as c, c.chat.completions.create(
            model="small", messages=HI, max_tokens=500, stream=True) as stream:  # type: ignore[arg-type]
        next(iter(stream))  # then gone mid-answer: no usage, the slot comes back all the same
    wait_until(lambda: 'llmgw_key_in_flight_requests{key="leaver"} 0.0'
               in httpx.get(server.url + "/metrics").text, 10, "the key's slot to be freed")
    assert chat(server, key).http_response.status_code == 200  # type: ignore[attr-defined]


def test_stream_usage_counts_against_tokens_per_minute(gateway: tuple[Server, Path]) -> None:
    server, _ = gateway
    key = make_key(server, name="tpm-30", tpm=30)
    with client(server, key) as c, c.chat.completions.create(
            model="small", messages=HI, max_tokens=40, stream=True) as stream:  # type: ignore[arg-type]
        assert sum(1 for chunk in stream if chunk.choices) >= 40  # ~2 estimated, 40+ used

    def settled() -> bool:
        text = httpx.get(server.url + "/metrics").text
        return 'llmgw_key_requests_total{key="tpm-30",model="small",status="200"} 1.0' in text

    wait_until(settled, 10, "the gateway to settle the stream's usage")
    with pytest.raises(openai.RateLimitError, match="tokens per minute") as caught:
        chat(server, key)
    assert caught.value.response.headers["x-ratelimit-remaining-tokens"] == "0"


def test_input_is_checked_before_any_engine(gateway: tuple[Server, Path]) -> None:
    server, _ = gateway
    key = make_key(server, name="careless")
    for messages, param in [([{"role": "wizard", "content": "x"}], "messages.0.role"),
                            ([*HI, {"role": "tool", "content": "4"}], "messages.1.tool_call_id"),
                            ([], "messages")]:
        with pytest.raises(openai.BadRequestError) as caught, client(server, key) as c:
            c.chat.completions.create(model="small", messages=messages)  # type: ignore[arg-type]
        assert caught.value.param == param  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError, match="n: at most 4"):
        chat(server, key, n=5)  # tenants.yaml: request_bounds.max_n


def test_metrics_by_key_name_never_by_secret(gateway: tuple[Server, Path]) -> None:
    server, _ = gateway
    key = make_key(server, name="metered", rpm=1)
    chat(server, key)
    with pytest.raises(openai.RateLimitError):
        chat(server, key)
    wait_until(lambda: 'llmgw_key_requests_total{key="metered",model="small",status="429"}'
               in httpx.get(server.url + "/metrics").text, 10, "the 429 to be counted")
    text = httpx.get(server.url + "/metrics").text
    assert 'llmgw_key_requests_total{key="metered",model="small",status="200"} 1.0' in text
    assert 'llmgw_key_rate_limited_total{key="metered",limit="key_requests",model="small"} ' \
           '1.0' in text
    assert 'llmgw_key_tokens_total{key="metered",kind="completion",model="small"}' in text
    assert 'llmgw_auth_failures_total{reason="unknown"}' in text
    assert key not in text and key not in server.output()


def test_a_reload_applies_auth_changes_in_place_and_keeps_runtime_keys(
        gateway: tuple[Server, Path]) -> None:
    server, state = gateway
    key = make_key(server, name="survivor")
    plan = reload_with(server, state, {"model_limits": {"small": {"rpm": 1}}})
    assert plan["changed"] == ["auth"]
    try:
        chat(server, key)
        with pytest.raises(openai.RateLimitError, match="on model 'small'"):
            chat(server, key)
    finally:
        assert reload_with(server, state, {})["changed"] == ["auth"]
    chat(server, key)  # the model limit is gone again; the runtime key stayed


def test_one_model_lookup_follows_the_allowlist(gateway: tuple[Server, Path]) -> None:
    server, _ = gateway
    key = make_key(server, name="lookup-small", models=["small"])
    with client(server, key) as c:
        assert c.models.retrieve("small").id == "small"
        with pytest.raises(openai.NotFoundError) as hidden:
            c.models.retrieve("large")
        with pytest.raises(openai.NotFoundError) as missing:
            c.models.retrieve("absent")
    assert hidden.value.body == {**missing.value.body,  # type: ignore[dict-item]
                                 "message": "The model 'large' does not exist."}
    with pytest.raises(openai.AuthenticationError), client(server, "llmgw-wrong") as wrong:
        wrong.models.retrieve("small")


def test_embedding_input_tokens_count_against_tokens_per_minute(
        gateway: tuple[Server, Path]) -> None:
    server, _ = gateway
    key = make_key(server, name="embed-tpm", tpm=30)
    with client(server, key) as c:
        reply = c.embeddings.create(model="small", input=[" ".join(["w"] * 20)] * 2)
        assert reply.usage.prompt_tokens == 40  # the fake: a token per word
        wait_until(lambda: 'llmgw_key_tokens_total{key="embed-tpm",kind="prompt",'
                           'model="small"} 40.0' in httpx.get(server.url + "/metrics").text,
                   10, "the gateway to settle the embedding's usage")
        with pytest.raises(openai.RateLimitError, match="tokens per minute"):
            c.embeddings.create(model="small", input="w")
