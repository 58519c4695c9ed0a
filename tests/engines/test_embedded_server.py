"""The embedded engine as a real process, driven by the official `openai` SDK."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from transformers import AutoTokenizer

from llmgw.engines.demo_model import ensure_demo_model
from tests.support import Server, engine_counter, free_port, wait_until

MESSAGES = [
    {"role": "system", "content": "Be terse."},
    {"role": "user", "content": "Write a haiku about queues."},
]
PROMPT = "def fibonacci(n):\n    "
GREEDY: dict[str, Any] = {"temperature": 0, "max_tokens": 40, "extra_body": {"ignore_eos": True}}
RUNNING = "llmgw_engine_requests_running"
ABORTED = "llmgw_engine_requests_aborted_total"


@pytest.fixture(scope="module")
def engine() -> Iterator[Server]:
    port = free_port()
    argv = [sys.executable, "-m", "llmgw.engines.embedded", "--model", "demo"]
    argv += ["--served-model-name", "demo", "--port", str(port), "--log-level", "warning"]
    server = Server(argv, port, "/health", timeout_s=120)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(ensure_demo_model())  # the cache the engine used


@pytest.fixture
def client(engine: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=engine.url + "/v1", api_key="x", max_retries=0) as c:
        yield c


def chat_prompt_tokens(tokenizer: Any) -> int:
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def test_models_and_health(engine: Server, client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == ["demo"]
    card = httpx.get(engine.url + "/v1/models").json()["data"][0]
    assert {k: card[k] for k in ("id", "object", "owned_by", "max_model_len")} == {
        "id": "demo",
        "object": "model",
        "owned_by": "llmgw",
        "max_model_len": 2048,
    }
    assert card["root"] == str(ensure_demo_model())
    assert httpx.get(engine.url + "/health").status_code == 200


def test_chat_usage_is_exact(client: openai.OpenAI, tokenizer: Any) -> None:
    reply = client.chat.completions.create(model="demo", messages=MESSAGES, **GREEDY)
    prompt = chat_prompt_tokens(tokenizer)
    assert (reply.object, reply.choices[0].finish_reason) == ("chat.completion", "length")
    assert reply.choices[0].message.role == "assistant"
    assert isinstance(reply.choices[0].message.content, str)
    assert reply.usage is not None
    usage = reply.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        prompt,
        40,
        prompt + 40,
    )


def test_chat_stream_equals_non_stream(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model="demo", messages=MESSAGES, **GREEDY)
    chunks = list(
        client.chat.completions.create(
            model="demo",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,
        )
    )
    first, *middle, usage_chunk = chunks
    assert (first.choices[0].delta.role, first.choices[0].delta.content) == ("assistant", "")
    assert [c.choices[0].finish_reason for c in middle][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in middle[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in middle) == (
        full.choices[0].message.content
    )
    assert (usage_chunk.choices, usage_chunk.usage) == ([], full.usage)
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")


def test_completion_stream_equals_non_stream(client: openai.OpenAI, tokenizer: Any) -> None:
    full = client.completions.create(model="demo", prompt=PROMPT, **GREEDY)
    chunks = list(client.completions.create(model="demo", prompt=PROMPT, stream=True, **GREEDY))
    assert "".join(c.choices[0].text for c in chunks) == full.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"
    assert full.usage is not None
    assert (full.usage.prompt_tokens, full.usage.completion_tokens) == (
        len(tokenizer(PROMPT).input_ids),  # BOS included, as vLLM counts it
        40,
    )


def test_usage_chunk_only_when_asked(engine: Server) -> None:
    body = {"prompt": PROMPT, "max_tokens": 3, "stream": True}
    lines = httpx.post(engine.url + "/v1/completions", json=body).text.split("\n\n")
    assert lines[-2:] == ["data: [DONE]", ""]
    assert not any('"usage"' in line for line in lines)


@pytest.mark.parametrize(
    "extra",
    [{"ignore_eos": True}, {"min_tokens": 16}, {"min_tokens": 16, "ignore_eos": True}],
    ids=["ignore_eos", "min_tokens", "both"],
)
def test_lengths_are_exact(client: openai.OpenAI, extra: dict[str, Any]) -> None:
    reply = client.completions.create(
        model="demo", prompt=PROMPT, max_tokens=16, temperature=0, extra_body=extra
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 16


def test_stop_string_and_seed(client: openai.OpenAI) -> None:
    text = client.completions.create(model="demo", prompt=PROMPT, **GREEDY).choices[0].text
    stop = text[8:12]
    cut = client.completions.create(model="demo", prompt=PROMPT, stop=[stop], **GREEDY)
    assert (cut.choices[0].text, cut.choices[0].finish_reason) == (text[: text.index(stop)], "stop")
    sampled = {"temperature": 1.0, "top_p": 0.9, "seed": 11, "max_tokens": 20}
    draws = [client.completions.create(model="demo", prompt=PROMPT, **sampled) for _ in range(2)]
    assert draws[0].choices[0].text == draws[1].choices[0].text


async def test_concurrent_requests_match_sequential_ones(engine: Server) -> None:
    prompts = [PROMPT, "import os\n", "class Queue:\n    def __init__(self):", "x"]
    async with openai.AsyncOpenAI(base_url=engine.url + "/v1", api_key="x") as client:

        async def complete(prompt: str) -> str:
            reply = await client.completions.create(model="demo", prompt=prompt, **GREEDY)
            return reply.choices[0].text

        alone = [await complete(p) for p in prompts]
        together = await asyncio.gather(*(complete(p) for p in prompts))
    assert list(together) == alone


def test_extra_fields_are_accepted(client: openai.OpenAI) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    reply = client.chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        max_tokens=2,
        tools=[tool],
        tool_choice="auto",
        response_format={"type": "json_object"},
        extra_body={"frobnicate": True, "top_k": 5},
    )
    assert reply.choices[0].finish_reason in {"stop", "length"}


CMPL, CHAT = "/v1/completions", "/v1/chat/completions"
TOO_LONG = "context_length_exceeded"
BAD_REQUESTS = {
    "bad-json": (CMPL, b'{"prompt": ', None, None),
    "not-object": (CMPL, b"[1, 2]", None, None),
    "wrong-type": (CMPL, {"prompt": "x", "max_tokens": "ten"}, "max_tokens", None),
    "negative": (CMPL, {"prompt": "x", "max_tokens": -1}, "max_tokens", None),
    "temperature": (CMPL, {"prompt": "x", "temperature": -1}, "temperature", None),
    "n": (CMPL, {"prompt": "x", "n": 2}, "n", None),
    "prompt-list": (CMPL, {"prompt": ["a", "b"]}, "prompt", None),
    "over-budget": (CMPL, {"prompt": "x", "max_tokens": 4000}, "max_tokens", TOO_LONG),
    "stream-options": (
        CMPL,
        {"prompt": "x", "stream_options": {"include_usage": 1}},
        "stream_options.include_usage",
        None,
    ),
    "no-messages": (CHAT, {"messages": []}, "messages", None),
    "no-role": (CHAT, {"messages": [{"content": "x"}]}, "messages[0]", None),
}


@pytest.mark.parametrize(
    ("path", "body", "param", "code"), BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys()
)
def test_bad_input_is_400_in_openai_shape(
    engine: Server, path: str, body: bytes | dict[str, Any], param: str | None, code: str | None
) -> None:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    response = httpx.post(engine.url + path, content=raw)
    assert response.status_code == 400
    error = response.json()["error"]
    assert isinstance(error.pop("message"), str)
    assert error == {"type": "invalid_request_error", "param": param, "code": code}


def test_sdk_sees_the_right_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model="demo", prompt="word " * 3000, max_tokens=1)
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=1)


def test_request_id_header_is_used(engine: Server) -> None:
    body = {"prompt": "x", "max_tokens": 1}
    response = httpx.post(engine.url + "/v1/completions", json=body, headers={"x-request-id": "r1"})
    assert (response.json()["id"], response.headers["x-request-id"]) == ("cmpl-r1", "r1")


LONG = {"prompt": PROMPT, "max_tokens": 2000, "ignore_eos": True, "temperature": 0}


def test_disconnect_mid_stream_frees_the_slot(engine: Server) -> None:
    aborted = engine_counter(engine.url, ABORTED)
    with (
        httpx.Client(timeout=30) as http,
        http.stream("POST", engine.url + "/v1/completions", json=LONG | {"stream": True}) as r,
    ):
        lines = r.iter_lines()  # keep it: a dropped iterator closes the connection
        assert next(lines).startswith('data: {"id":"cmpl-')
        assert engine_counter(engine.url, RUNNING) == 1
    wait_until(
        lambda: (
            engine_counter(engine.url, RUNNING) == 0
            and engine_counter(engine.url, ABORTED) == aborted + 1
        ),
        10,
        "the engine to abort the stream",
    )


async def _poll(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    """Bounded async poll of an outside process's state (never ordering our own steps)."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_disconnect_during_non_streaming_request_frees_the_slot(engine: Server) -> None:
    aborted = engine_counter(engine.url, ABORTED)
    async with httpx.AsyncClient(base_url=engine.url, timeout=30) as http:

        async def counter(name: str) -> float:
            for line in (await http.get("/metrics")).text.splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
            raise AssertionError(name)

        async def running_is(n: int) -> bool:
            return await counter(RUNNING) == n

        task = asyncio.create_task(http.post("/v1/completions", json=LONG))
        await _poll(lambda: running_is(1), 10, "the request to start generating")
        task.cancel()  # drops the connection mid-request
        with pytest.raises(asyncio.CancelledError):
            await task
        await _poll(lambda: running_is(0), 10, "the engine to drop the request")
        assert await counter(ABORTED) == aborted + 1
