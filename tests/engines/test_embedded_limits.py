"""Client-controlled work in the embedded engine is refused or bounded, and none of it
runs on the engine's event loop: a real engine process, the official `openai` SDK.

Issue 17 (review findings 12, 13 and 16): request-supplied chat templates, huge
prompts, unbounded stop lists, out-of-vocabulary stop token ids and oversized bodies.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from transformers import AutoTokenizer

from llmgw.engines.demo_model import ensure_demo_model
from llmgw.engines.embedded.__main__ import parse_args
from llmgw.engines.embedded.server import DEFAULT_MAX_BODY_BYTES
from llmgw.placement.commands import engine_args_to_flags
from llmgw.protocol import MAX_STOP_STRING_CHARS, MAX_STOP_STRINGS
from tests.engines.test_embedded_server import _poll
from tests.support import Server, free_port

HI = [{"role": "user", "content": "hi"}]
CHAT, CMPL = "/v1/chat/completions", "/v1/completions"
PREPARING = "llmgw_engine_requests_preparing"
BODY_LIMIT = 1 << 20  # the trusted engine's --max-body-bytes
# ~1.5e8 Jinja loop iterations: a few seconds of rendering, then the user's message.
SLOW_TEMPLATE = (
    "{%- for i in range(1500) %}{% for j in range(100000) %}{% endfor %}{% endfor -%}"
    "{{ messages[0].content }}"
)


def _engine(*flags: str) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "llmgw.engines.embedded", "--model", "demo"]
    argv += ["--served-model-name", "demo", "--port", str(port), "--log-level", "warning"]
    return Server([*argv, *flags], port, "/health", timeout_s=120)


@pytest.fixture(scope="module")
def engine() -> Iterator[Server]:
    """Default flags, as `configs/local.yaml` launches it."""
    server = _engine()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def trusting() -> Iterator[Server]:
    """An operator who trusts request templates (and keeps bodies small)."""
    server = _engine("--trust-request-chat-template", "--max-body-bytes", str(BODY_LIMIT))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(ensure_demo_model())


def _client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


def _error(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


def test_gateway_engine_args_reach_the_flags() -> None:
    """`engine_args: {trust_request_chat_template: true}` means the same to vLLM and to
    the embedded engine."""
    default = parse_args(["--model", "demo"])
    flags = engine_args_to_flags({"trust_request_chat_template": True, "max_body_bytes": 4096})
    trusting = parse_args(["--model", "demo", *flags])
    assert (default.trust_request_chat_template, default.max_body_bytes) == (
        False,
        DEFAULT_MAX_BODY_BYTES,
    )
    assert (trusting.trust_request_chat_template, trusting.max_body_bytes) == (True, 4096)


TEMPLATE_FIELDS = {
    "top-level": {"chat_template": "{{ 'hello' }}"},
    "kwargs": {"chat_template_kwargs": {"chat_template": "{{ 'hello' }}"}},
}


@pytest.mark.parametrize("extra", TEMPLATE_FIELDS.values(), ids=TEMPLATE_FIELDS.keys())
def test_request_chat_template_is_refused_by_default(engine: Server, extra: dict[str, Any]) -> None:
    with _client(engine) as client, pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="demo", messages=HI, max_tokens=1, extra_body=extra)
    assert "--trust-request-chat-template" in refused.value.message
    assert "Refused request with untrusted chat template" in refused.value.message


@pytest.mark.parametrize("extra", TEMPLATE_FIELDS.values(), ids=TEMPLATE_FIELDS.keys())
def test_trusted_request_chat_template_is_used(
    trusting: Server, tokenizer: Any, extra: dict[str, Any]
) -> None:
    with _client(trusting) as client:
        reply = client.chat.completions.create(
            model="demo", messages=HI, max_tokens=1, extra_body=extra
        )
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == len(tokenizer("hello", add_special_tokens=False).input_ids)


def test_tokenize_in_template_kwargs_is_refused(engine: Server) -> None:
    body = {"messages": HI, "max_tokens": 1, "chat_template_kwargs": {"tokenize": True}}
    response = httpx.post(engine.url + CHAT, json=body)
    assert (response.status_code, _error(response)["param"]) == (400, "chat_template_kwargs")


async def test_health_answers_while_a_prompt_is_being_prepared(trusting: Server) -> None:
    """Rendering (and tokenizing) runs off the event loop: while a slow template renders,
    /health answers (within the gateway's 2 s health timeout) and the request is still
    in flight afterwards."""
    body = {"messages": HI, "max_tokens": 1, "chat_template": SLOW_TEMPLATE}
    async with httpx.AsyncClient(base_url=trusting.url, timeout=120) as http:

        async def preparing() -> float:
            for line in (await http.get("/metrics")).text.splitlines():
                if line.startswith(PREPARING + " "):
                    return float(line.split()[1])
            raise AssertionError(f"{PREPARING} not in /metrics")

        async def started() -> bool:
            return await preparing() == 1

        slow = asyncio.create_task(http.post(CHAT, json=body))
        await _poll(started, 30, "the engine to start rendering the slow template")
        health = await http.get("/health", timeout=2)
        still_preparing = await preparing()
        assert (health.status_code, still_preparing, slow.done()) == (200, 1, False)
        assert (await slow).status_code == 200


HUGE = "hello world " * 690_000  # 8 280 000 characters, as in the review


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, {"messages": [{"role": "user", "content": HUGE}]}, "messages"),
        (CMPL, {"prompt": HUGE}, "prompt"),
    ],
    ids=["chat", "completion"],
)
def test_huge_prompt_is_refused_before_tokenizing(
    engine: Server, path: str, body: dict[str, Any], param: str
) -> None:
    response = httpx.post(engine.url + path, json={**body, "max_tokens": 1}, timeout=60)
    assert response.status_code == 400
    error = _error(response)
    message = error.pop("message")
    code = "context_length_exceeded"
    assert error == {"type": "invalid_request_error", "param": param, "code": code}
    # Refused on its length in characters: no token count was ever computed.
    assert message.startswith("This model's maximum context length is 2048 tokens. However, ")
    assert "characters" in message


def _stop_case(n: int, chars: int) -> list[str]:
    return [f"{i:04d}".ljust(chars, "z") for i in range(n)]


@pytest.mark.parametrize(
    ("stop", "status"),
    [
        (_stop_case(MAX_STOP_STRINGS, MAX_STOP_STRING_CHARS), 200),
        (_stop_case(MAX_STOP_STRINGS + 1, 4), 400),
        (_stop_case(1, MAX_STOP_STRING_CHARS + 1), 400),
        ("z" * (MAX_STOP_STRING_CHARS + 1), 400),
    ],
    ids=["at-the-bounds", "too-many", "too-long", "too-long-single"],
)
def test_stop_list_is_bounded(engine: Server, stop: list[str] | str, status: int) -> None:
    body = {"prompt": "x", "max_tokens": 2, "stop": stop}
    response = httpx.post(engine.url + CMPL, json=body)
    assert response.status_code == status
    if status == 400:
        assert _error(response)["param"] == "stop"


@pytest.mark.parametrize("ids", [[-1], [2048], [5, 10**9]], ids=["negative", "vocab", "huge"])
def test_stop_token_ids_outside_the_vocabulary_are_refused(engine: Server, ids: list[int]) -> None:
    # With min_tokens the ids are banned from sampling: an unchecked id was a 500.
    body = {"prompt": "x", "max_tokens": 4, "min_tokens": 2, "stop_token_ids": ids}
    response = httpx.post(engine.url + CMPL, json=body)
    assert (response.status_code, _error(response)["param"]) == (400, "stop_token_ids")


def _chunks(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), 1 << 16):
        yield data[start : start + (1 << 16)]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_the_limit_is_413(trusting: Server, chunked: bool) -> None:
    raw = orjson.dumps({"prompt": "x" * BODY_LIMIT, "max_tokens": 1})
    content = _chunks(raw) if chunked else raw
    response = httpx.post(trusting.url + CMPL, content=content)
    assert (response.status_code, _error(response)["code"]) == (413, "payload_too_large")
    assert httpx.get(trusting.url + "/health").status_code == 200
