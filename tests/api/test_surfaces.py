"""The API surface beyond chat through the official SDK, against real fake-engine processes:
/v1/embeddings, /v1/responses (JSON and streamed events, disconnects), /tokenize and
/detokenize, GET /v1/models/{id}, and the metrics and errors each gets. The fake engine
answers each one deterministically (llmgw.engines.fake_endpoints), so what arrives is
exactly what the engine sent."""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from llmgw.engines.fake_endpoints import fake_embedding
from tests.support import Server, engine_counter, start_gateway, wait_until


def sample(gateway: Server, name: str) -> float:
    for line in httpx.get(gateway.url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def requests_total(gateway: Server, endpoint: str, status: str = "200") -> float:
    return sample(gateway, f'llmgw_requests_total{{endpoint="{endpoint}",model="fake",'
                           f'status="{status}"}}')


# Without encoding_format the SDK asks for base64 and decodes it: both give the floats.
@pytest.mark.parametrize("encoding", [{"encoding_format": "float"}, {}],
                         ids=["float", "sdk-base64"])
def test_embeddings_single_batch_and_token_ids(client: openai.OpenAI, gateway: Server,
                                               encoding: dict[str, Any]) -> None:
    before = requests_total(gateway, "embeddings")
    prompt_before = sample(gateway, 'llmgw_prompt_tokens_total{model="fake"}')
    single = client.embeddings.create(model="fake", input="a b c", **encoding)
    batch = client.embeddings.create(model="fake", input=["a b c", "d"], **encoding)
    ids = client.embeddings.create(model="fake", input=[[1, 2], [3]], dimensions=4)
    assert single.data[0].embedding == pytest.approx(fake_embedding("a b c", 8), rel=1e-6)
    assert [d.embedding for d in batch.data] == [
        pytest.approx(fake_embedding(t, 8), rel=1e-6) for t in ("a b c", "d")]
    assert [d.embedding for d in ids.data] == [
        pytest.approx(fake_embedding(i, 4), rel=1e-6) for i in ([1, 2], [3])]
    assert (single.usage.prompt_tokens, batch.usage.prompt_tokens,
            ids.usage.prompt_tokens) == (3, 4, 3)
    assert requests_total(gateway, "embeddings") - before == 3
    assert sample(gateway, 'llmgw_prompt_tokens_total{model="fake"}') - prompt_before == 10


def test_embeddings_input_is_checked_before_any_engine(client: openai.OpenAI) -> None:
    # The field is named without pydantic's name for the union's member (input.str).
    for bad in ([], [[]], [-1], 5, [["a"]], [1, "a"]):
        with pytest.raises(openai.BadRequestError) as caught:
            client.embeddings.create(model="fake", input=bad)  # type: ignore[arg-type]
        assert caught.value.param == "input", caught.value.message
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="x")


def test_responses_json_with_usage_and_token_metrics(client: openai.OpenAI,
                                                     gateway: Server) -> None:
    before = requests_total(gateway, "responses")
    completion_before = sample(gateway, 'llmgw_completion_tokens_total{model="fake"}')
    raw = client.responses.with_raw_response.create(model="fake", input="a b c",
                                                    max_output_tokens=3)
    reply = raw.parse()
    assert reply.output_text == "tok0 tok1 tok2"
    assert reply.usage is not None
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (3, 3)
    assert raw.headers["x-llmgw-replica"] in ("fake-0", "fake-1")
    assert requests_total(gateway, "responses") - before == 1
    # Responses' input_tokens / output_tokens count as the model's prompt and completion.
    assert sample(gateway, 'llmgw_completion_tokens_total{model="fake"}') - \
        completion_before == 3


def test_responses_stream_relays_every_event_and_counts_usage(client: openai.OpenAI,
                                                              gateway: Server) -> None:
    completion_before = sample(gateway, 'llmgw_completion_tokens_total{model="fake"}')
    with client.responses.stream(model="fake", input="hi", max_output_tokens=4) as stream:
        kinds = Counter(event.type for event in stream)
        final = stream.get_final_response()
    assert kinds == Counter({"response.output_text.delta": 4, **{f"response.{kind}": 1 for kind in (
        "created", "in_progress", "output_item.added", "content_part.added",
        "output_text.done", "content_part.done", "output_item.done", "completed")}})
    assert final.output_text == "tok0 tok1 tok2 tok3"
    assert sample(gateway, 'llmgw_completion_tokens_total{model="fake"}') - \
        completion_before == 4
    # As the engine ends it: with response.completed, no [DONE].
    with httpx.stream("POST", gateway.url + "/v1/responses", json={
            "model": "fake", "input": "hi", "max_output_tokens": 2, "stream": True}) as r:
        body = r.read()
    assert body.rstrip().split(b"\n\n")[-1].startswith(b"event: response.completed\n")
    assert b"[DONE]" not in body


def test_a_client_leaving_a_responses_stream_aborts_the_engine(
        gateway: Server, engines: list[Server]) -> None:
    aborted = sum(engine_counter(e.url, "llmgw_engine_requests_aborted_total")
                  for e in engines)
    body = httpx.Request("POST", "/", json={"model": "fake", "input": "hi", "stream": True,
                                            "max_output_tokens": 2000}).content
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/responses HTTP/1.1\r\nhost: x\r\ncontent-type: "
                     b"application/json\r\ncontent-length: " + str(len(body)).encode() +
                     b"\r\n\r\n" + body)
        seen = b""
        while b"response.output_text.delta" not in seen:  # generating has begun
            seen += sock.recv(65536)
    wait_until(lambda: sum(engine_counter(e.url, "llmgw_engine_requests_aborted_total")
                           for e in engines) == aborted + 1, 10, "the engine to see the abort")
    assert all(engine_counter(e.url, "llmgw_engine_requests_running") == 0 for e in engines)


def test_tokenize_and_detokenize_round_trip(gateway: Server) -> None:
    tokens = httpx.post(gateway.url + "/tokenize", json={"model": "fake", "prompt": "héllo"})
    assert tokens.status_code == 200
    assert tokens.json()["tokens"] == [ord(c) for c in "héllo"]  # the fake: code points
    chat = httpx.post(gateway.url + "/tokenize", json={
        "model": "fake", "messages": [{"role": "user", "content": "hi"}]}).json()
    assert chat["count"] == len("<user>hi")
    text = httpx.post(gateway.url + "/detokenize",
                      json={"model": "fake", "tokens": tokens.json()["tokens"]})
    assert text.json() == {"prompt": "héllo"}
    assert requests_total(gateway, "tokenize") >= 2
    assert requests_total(gateway, "detokenize") >= 1


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/tokenize", {"model": "fake"}, None),
    ("/tokenize", {"model": "fake", "prompt": "x", "messages": [{"role": "user"}]}, None),
    ("/tokenize", {"model": "fake", "prompt": None}, None),
    ("/detokenize", {"model": "fake", "tokens": [-1]}, "tokens.0"),
    ("/detokenize", {"tokens": [1]}, "model"),
    ("/v1/responses", {"model": "fake", "input": "x", "max_output_tokens": 0},
     "max_output_tokens"),
    ("/v1/responses", {"model": "fake", "input": 5}, "input"),
], ids=["tokenize-nothing", "tokenize-both", "tokenize-null", "detokenize-negative",
        "detokenize-no-model", "responses-zero-tokens", "responses-bad-input"])
def test_bad_bodies_are_openai_400s(gateway: Server, path: str, body: dict[str, Any],
                                    param: str | None) -> None:
    response = httpx.post(gateway.url + path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


def test_get_one_model(client: openai.OpenAI, gateway: Server) -> None:
    assert client.models.retrieve("fake").model_dump(exclude_none=True) == {
        "id": "fake", "object": "model", "owned_by": "llmgw",
        "created": client.models.list().data[0].created}
    assert client.models.retrieve("renamed").id == "renamed"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("nope")
    assert caught.value.body == {"message": "The model 'nope' does not exist.",  # type: ignore[comparison-overlap]
                                 "type": "invalid_request_error", "param": "model",
                                 "code": "model_not_found"}
    assert httpx.get(gateway.url + "/v1/models/org/with/slashes").status_code == 404


@pytest.fixture(scope="module")
def typed_gateway(engines: list[Server],
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Fake engines attached as engine types that do not serve every endpoint (the fake
    answers them all: a refusal can only come from the gateway)."""
    config = {"models": [
        {"name": "sg", "engine": "sglang", "url": [engines[0].url]},
        {"name": "tf", "engine": "transformers", "url": [engines[1].url]},
    ]}
    server = start_gateway(config, tmp_path_factory.mktemp("typed"))
    yield server
    server.stop()


@pytest.mark.parametrize(("model", "path", "engine"), [
    ("tf", "/v1/responses", "transformers"), ("sg", "/v1/responses", "sglang"),
    ("sg", "/tokenize", "sglang"), ("sg", "/detokenize", "sglang"),
], ids=["responses-on-embedded", "responses-on-sglang", "tokenize-on-sglang",
        "detokenize-on-sglang"])
def test_an_endpoint_the_engine_does_not_serve_is_a_clear_400(
        typed_gateway: Server, engines: list[Server], model: str, path: str,
        engine: str) -> None:
    served = [engine_counter(e.url, "llmgw_engine_requests_served_total") for e in engines]
    body = {"model": model, "input": "x", "prompt": "x"} if path != "/detokenize" else \
        {"model": model, "tokens": [1]}
    if path == "/v1/responses":
        body.pop("prompt")
    response = httpx.post(typed_gateway.url + path, json=body)
    assert response.status_code == 400
    assert response.json() == {"error": {
        "message": f"The model '{model}' runs on the {engine} engine, which does not serve "
                   f"{path}.", "type": "invalid_request_error", "param": "model",
        "code": "unsupported_endpoint"}}
    assert [engine_counter(e.url, "llmgw_engine_requests_served_total")
            for e in engines] == served
    assert sample(typed_gateway, f'llmgw_requests_total{{endpoint="{path.split("/")[-1]}",'
                                 f'model="{model}",status="400"}}') >= 1


def test_what_the_engine_serves_is_relayed(typed_gateway: Server) -> None:
    with openai.OpenAI(base_url=typed_gateway.url + "/v1", api_key="x", max_retries=0) as c:
        assert len(c.embeddings.create(model="sg", input="a").data[0].embedding) == 8
        assert len(c.embeddings.create(model="tf", input="a").data[0].embedding) == 8
    assert httpx.post(typed_gateway.url + "/tokenize",
                      json={"model": "tf", "prompt": "ab"}).json()["tokens"] == [97, 98]
