"""The embedded engine's prompt rules and stop matching, in process on the demo tokenizer
(issue 17: request templates, the prompt's character bound, bounded stop matching)."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import AutoTokenizer

from llmgw.engines.demo_model import ensure_demo_model
from llmgw.engines.embedded.prompts import UNTRUSTED_TEMPLATE, PromptBuilder, prompt_char_bound
from llmgw.engines.embedded.text_output import TextAssembler
from llmgw.errors import ContextTooLong, InvalidRequest

HI = [{"role": "user", "content": "hi"}]
X = "{{ 'x' }}"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(ensure_demo_model())


def builder(tokenizer: Any, trusted: bool = False) -> PromptBuilder:
    return PromptBuilder(
        tokenizer, max_model_len=2048, vocab_size=2048, trust_request_chat_template=trusted
    )


def test_char_bound_covers_every_token(tokenizer: Any) -> None:
    """The bound is safe: no token of the vocabulary decodes to more characters than
    the per-token share of the bound, special tokens included."""
    longest = max(len(tokenizer.decode([i])) for i in range(len(tokenizer)))
    assert longest * 2048 <= prompt_char_bound(tokenizer, 2048) <= 2048 * 4 * 64


MODEL = "the model's own template"


def _outcome(tokenizer: Any, trusted: bool, body: dict[str, Any]) -> tuple[str, str | None]:
    """("ok", the rendered prompt) or (the error class, its param)."""
    try:
        ids = builder(tokenizer, trusted).chat_ids(body)
    except InvalidRequest as exc:
        return type(exc).__name__, exc.param
    text = tokenizer.decode(ids)
    own = tokenizer.apply_chat_template(HI, tokenize=False, add_generation_prompt=True)
    return "ok", MODEL if text == own else text


TEMPLATE_CASES = {
    "model-template": ({}, False, ("ok", MODEL)),
    "nulls": ({"chat_template": None, "chat_template_kwargs": {"chat_template": None}}, False,
              ("ok", MODEL)),
    "other-kwargs": ({"chat_template_kwargs": {"enable_thinking": True}}, False, ("ok", MODEL)),
    "top-level": ({"chat_template": X}, False, ("InvalidRequest", "chat_template")),
    "kwargs": ({"chat_template_kwargs": {"chat_template": X}}, False,
               ("InvalidRequest", "chat_template_kwargs")),
    "kwargs-not-a-string": ({"chat_template_kwargs": {"chat_template": 1}}, False,
                            ("InvalidRequest", "chat_template_kwargs")),
    "tokenize": ({"chat_template_kwargs": {"tokenize": True}}, True,
                 ("InvalidRequest", "chat_template_kwargs")),
    "trusted-top-level": ({"chat_template": X}, True, ("ok", "x")),
    "trusted-kwargs": ({"chat_template_kwargs": {"chat_template": X}}, True, ("ok", "x")),
    "trusted-both": ({"chat_template": X, "chat_template_kwargs": {"chat_template": "y"}}, True,
                     ("ok", "x")),
    "trusted-not-a-string": ({"chat_template_kwargs": {"chat_template": 1}}, True,
                             ("InvalidRequest", "chat_template_kwargs.chat_template")),
}  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "trusted", "expected"), TEMPLATE_CASES.values(), ids=TEMPLATE_CASES.keys()
)
def test_request_template_rules(
    tokenizer: Any, extra: dict[str, Any], trusted: bool, expected: tuple[str, str | None]
) -> None:
    assert _outcome(tokenizer, trusted, {"messages": HI, **extra}) == expected


def test_untrusted_template_message_is_vllms(tokenizer: Any) -> None:
    with pytest.raises(InvalidRequest, match="--trust-request-chat-template is not set"):
        builder(tokenizer).chat_ids({"messages": HI, "chat_template": X})
    assert UNTRUSTED_TEMPLATE.endswith("Refused request with untrusted chat template.")


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_prompt_over_the_char_bound_is_too_long(tokenizer: Any, kind: str) -> None:
    build = builder(tokenizer)
    text = "a" * (build.max_chars + 1)
    body = {"messages": [{"role": "user", "content": text}]} if kind == "chat" else {"prompt": text}
    with pytest.raises(ContextTooLong) as too_long:
        build.request(body, kind)
    assert too_long.value.param == ("messages" if kind == "chat" else "prompt")
    assert too_long.value.message.startswith(
        "This model's maximum context length is 2048 tokens. However, your request has more "
        "than 2048 input tokens ("
    )


def _run(tokenizer: Any, text: str, stop: tuple[str, ...], include: bool = False) -> Any:
    assembler = TextAssembler(tokenizer, [], stop=stop, include_stop=include)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    emitted = "".join(assembler.push(t) for t in ids)
    return emitted + assembler.flush(), assembler.stop_reason


TEXT = "alpha beta STOP gamma delta"
STOP_CASES = {
    "earliest-wins": (("gamma", "ta ST", "STOP"), False, ("alpha be", "ta ST")),
    "order-independent": (("STOP", "ta ST", "gamma"), False, ("alpha be", "ta ST")),
    "included": (("STOP",), True, ("alpha beta STOP", "STOP")),
    "spans-tokens": (("beta STOP gam",), False, ("alpha ", "beta STOP gam")),
    "same-start-shorter": (("STOP gamma", "STOP"), False, ("alpha beta ", "STOP")),
    "absent": (("omega",), False, (TEXT, None)),
}


@pytest.mark.parametrize(
    ("stop", "include", "expected"), STOP_CASES.values(), ids=STOP_CASES.keys()
)
def test_stop_matching(
    tokenizer: Any, stop: tuple[str, ...], include: bool, expected: tuple[str, str | None]
) -> None:
    assert _run(tokenizer, TEXT, stop, include) == expected
