"""`llmgw up configs/embeddings.yaml`: the demo model served for embeddings by real vLLM
(CPU, a pooling model: `--runner pooling --convert embed`, mean pooling) and by the
embedded engine, through one gateway, driven by the official openai SDK. vLLM's vectors
are relayed as vLLM sent them, and the embedded engine's pooling gives the same ones."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.support import ROOT, Server, free_port

pytestmark = pytest.mark.e2e
TEXTS = ["def add(a, b):", "return a + b", "queues and gateways"]


@pytest.fixture(scope="module")
def gateway() -> Iterator[Server]:
    if not (ROOT / ".venv-vllm" / "bin" / "python").exists():
        pytest.fail("vLLM is not installed: run `make vllm` (make test does)")
    port = free_port()
    server = Server([sys.executable, "-m", "llmgw", "up", "configs/embeddings.yaml", "--port",
                     str(port)], port, "/ready", timeout_s=400)
    yield server
    server.stop()


def test_vllm_and_the_embedded_engine_embed_alike(client: openai.OpenAI,
                                                  gateway: Server) -> None:
    by_vllm = client.embeddings.create(model="demo-embed", input=TEXTS)  # SDK: base64
    local = client.embeddings.create(model="demo-local", input=TEXTS)
    assert [len(d.embedding) for d in by_vllm.data] == [128] * 3
    for ours, theirs in zip(local.data, by_vllm.data, strict=True):
        assert ours.embedding == pytest.approx(theirs.embedding, abs=1e-5)
    assert by_vllm.usage.prompt_tokens == local.usage.prompt_tokens > 3
    as_floats = client.embeddings.create(model="demo-embed", input=TEXTS[0],
                                         encoding_format="float")
    assert as_floats.data[0].embedding == pytest.approx(by_vllm.data[0].embedding, abs=1e-6)
    text = httpx.get(gateway.url + "/metrics").text
    assert 'llmgw_requests_total{endpoint="embeddings",model="demo-embed",status="200"} 2.0' \
        in text


def test_a_pooling_model_refuses_generation_in_its_own_words(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="demo-embed", max_tokens=2,
                                       messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code in (400, 404)
    assert isinstance(caught.value.body, dict) and caught.value.body["message"]
    assert client.models.retrieve("demo-embed").id == "demo-embed"
