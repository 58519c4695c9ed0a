"""The gateway's PromptTokenizer never runs a request's own chat template unless the
operator trusts them, and does not tokenize prompts beyond its character bound
(issue 17, review finding 12): routing then has no token opinion, never a failure."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from llmgw.engines.demo_model import ensure_demo_model
from llmgw.engines.prompt_tokens import DEFAULT_MAX_PROMPT_CHARS, PromptTokenizer

HI = [{"role": "user", "content": "hi"}]
X = "{{ 'x' }}"  # renders "x": cheap, and visibly not the model's own template


@pytest.fixture(scope="module")
def source() -> str:
    return str(ensure_demo_model())


@pytest.fixture(scope="module")
def plain(source: str) -> Iterator[PromptTokenizer]:
    tokenizer = PromptTokenizer.load(source)
    yield tokenizer
    tokenizer.close()


@pytest.fixture(scope="module")
def trusting(source: str) -> Iterator[PromptTokenizer]:
    tokenizer = PromptTokenizer.load(source, trust_request_chat_template=True)
    yield tokenizer
    tokenizer.close()


def _x_tokens(tokenizer: PromptTokenizer) -> list[int] | None:
    tokens = tokenizer.tokens_now("completions", {"prompt": "x", "add_special_tokens": False})
    return list(tokens) if tokens is not None else None


REQUEST_TEMPLATES = {
    "top-level": {"chat_template": X},
    "kwargs": {"chat_template_kwargs": {"chat_template": X}},
    "both": {"chat_template": X, "chat_template_kwargs": {"chat_template": "{{ 'y' }}"}},
}


@pytest.mark.parametrize("extra", REQUEST_TEMPLATES.values(), ids=REQUEST_TEMPLATES.keys())
def test_request_template_is_not_rendered_without_trust(
    plain: PromptTokenizer, extra: dict[str, Any]
) -> None:
    assert plain.tokens_now("chat", {"messages": HI, **extra}) is None


@pytest.mark.parametrize("extra", REQUEST_TEMPLATES.values(), ids=REQUEST_TEMPLATES.keys())
def test_trusted_request_template_is_rendered_like_vllm(
    trusting: PromptTokenizer, extra: dict[str, Any]
) -> None:
    # The top-level template wins over the one in chat_template_kwargs, as in vLLM.
    assert list(trusting.tokens_now("chat", {"messages": HI, **extra}) or []) == _x_tokens(
        trusting
    )


def test_model_template_and_other_kwargs_still_work(plain: PromptTokenizer) -> None:
    tokens = plain.tokens_now("chat", {"messages": HI})
    with_kwargs = plain.tokens_now(
        "chat", {"messages": HI, "chat_template_kwargs": {"enable_thinking": False}}
    )
    nulls = plain.tokens_now(
        "chat", {"messages": HI, "chat_template": None, "chat_template_kwargs": None}
    )
    assert tokens and len(tokens) > 3 and with_kwargs == tokens and nulls == tokens
    refused = {"messages": HI, "chat_template_kwargs": {"tokenize": True}}  # vLLM: 400
    assert plain.tokens_now("chat", refused) is None


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("chat", {"messages": [{"role": "user", "content": "a" * (DEFAULT_MAX_PROMPT_CHARS + 1)}]}),
        ("chat", {"messages": [{"role": "user", "content": "a" * DEFAULT_MAX_PROMPT_CHARS}]}),
        ("completions", {"prompt": "a" * (DEFAULT_MAX_PROMPT_CHARS + 1)}),
    ],
    ids=["chat-content", "chat-rendered", "completion"],
)
def test_prompt_beyond_the_bound_is_not_tokenized(
    plain: PromptTokenizer, endpoint: Any, body: dict[str, Any]
) -> None:
    # "chat-rendered": the content fits, the template's own text pushes it over.
    assert plain.tokens_now(endpoint, body) is None


def test_prompt_at_the_bound_is_tokenized(source: str) -> None:
    tokenizer = PromptTokenizer.load(source, max_chars=1000)
    try:
        tokens = tokenizer.tokens_now("completions", {"prompt": "word " * 200})
        over = tokenizer.tokens_now("completions", {"prompt": "word " * 200 + "!"})
    finally:
        tokenizer.close()
    assert (bool(tokens), over) == (True, None)
