"""The embedded engine's embeddings and tokenizer routes, as a real process behind a real
gateway, driven by the official `openai` SDK: vectors equal the demo model's own mean-
pooled last hidden state (computed here with transformers), /tokenize and /detokenize
equal its tokenizer, and bad input is an OpenAI-shaped 400."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmgw.engines.demo_model import ensure_demo_model
from tests.support import Server, free_port, start_gateway

TEXTS = ["def add(a, b):", "return a + b", "queues and gateways"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    engine = Server([sys.executable, "-m", "llmgw.engines.embedded", "--model", "demo",
                     "--served-model-name", "demo", "--port", str(port), "--log-level",
                     "warning"], port, "/health", timeout_s=120)
    try:
        config = {"models": [{"name": "demo", "engine": "transformers", "url": [engine.url]}]}
        server = start_gateway(config, tmp_path_factory.mktemp("pooling"))
        yield server
        server.stop()
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def client(gateway: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def reference() -> tuple[Any, Any]:
    root = ensure_demo_model()  # the directory the engine loaded
    model = AutoModelForCausalLM.from_pretrained(root, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(root)


def expected_vector(reference: tuple[Any, Any], ids: list[int]) -> list[float]:
    model, _ = reference
    with torch.inference_mode():
        hidden = model.base_model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    return torch.nn.functional.normalize(hidden.mean(dim=0), dim=0).tolist()  # type: ignore[no-any-return]


def test_embeddings_are_the_models_pooled_hidden_states(
        client: openai.OpenAI, reference: tuple[Any, Any]) -> None:
    _, tokenizer = reference
    ids = [tokenizer(t).input_ids for t in TEXTS]
    batch = client.embeddings.create(model="demo", input=TEXTS)  # the SDK asks for base64
    floats = client.embeddings.create(model="demo", input=TEXTS[0], encoding_format="float")
    from_ids = client.embeddings.create(model="demo", input=ids)
    single_ids = client.embeddings.create(model="demo", input=ids[0])
    for index, item in enumerate(batch.data):
        assert len(item.embedding) == 128  # the demo model's hidden size
        assert item.embedding == pytest.approx(expected_vector(reference, ids[index]),
                                               abs=1e-5)
        assert from_ids.data[index].embedding == pytest.approx(item.embedding, abs=1e-6)
    assert floats.data[0].embedding == pytest.approx(batch.data[0].embedding, abs=1e-6)
    assert single_ids.data[0].embedding == pytest.approx(batch.data[0].embedding, abs=1e-6)
    assert batch.usage.prompt_tokens == sum(len(i) for i in ids)
    assert batch.model == "demo"


@pytest.mark.parametrize(("extra", "param", "code"), [
    ({"input": "x", "dimensions": 64}, "dimensions", None),
    ({"input": [[5000]]}, "input.0", None),  # past the vocabulary
    ({"input": "word " * 5000}, "input", "context_length_exceeded"),
], ids=["dimensions", "token-id", "too-long"])
def test_bad_embedding_input_is_a_400(client: openai.OpenAI, extra: dict[str, Any],
                                      param: str, code: str | None) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="demo", **extra)
    assert (caught.value.param, caught.value.code) == (param, code)  # type: ignore[attr-defined]


def test_tokenize_and_detokenize_are_the_models_tokenizer(
        gateway: Server, reference: tuple[Any, Any]) -> None:
    _, tokenizer = reference
    url = gateway.url
    prompt = httpx.post(url + "/tokenize", json={"model": "demo", "prompt": TEXTS[0],
                                                 "return_token_strs": True}).json()
    ids = tokenizer(TEXTS[0]).input_ids
    assert prompt == {"count": len(ids), "max_model_len": 2048, "tokens": ids,
                      "token_strs": tokenizer.convert_ids_to_tokens(ids)}
    bare = httpx.post(url + "/tokenize", json={"model": "demo", "prompt": TEXTS[0],
                                               "add_special_tokens": False}).json()
    assert bare["tokens"] == tokenizer(TEXTS[0], add_special_tokens=False).input_ids
    messages = [{"role": "user", "content": "hi"}]
    chat = httpx.post(url + "/tokenize", json={"model": "demo", "messages": messages}).json()
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert chat["tokens"] == tokenizer(text, add_special_tokens=False).input_ids
    back = httpx.post(url + "/detokenize", json={"model": "demo", "tokens": ids}).json()
    assert back == {"prompt": tokenizer.decode(ids)}
    bad = httpx.post(url + "/detokenize", json={"model": "demo", "tokens": [10**6]})
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "tokens")


def test_responses_are_refused_naming_the_engine(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="demo", input="hi")
    assert caught.value.code == "unsupported_endpoint"
    assert "transformers engine" in caught.value.message
