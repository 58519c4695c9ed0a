"""The tool loop's pure parts (llmgw/tools/loop.py): the hosted entry in both spellings,
the request each round sends, a streamed round put together, usage summed."""

from __future__ import annotations

from typing import Any

import pytest

from llmgw.config import GatewayConfig
from llmgw.errors import InvalidRequest
from llmgw.tools.loop import (
    HostedTools,
    StreamTurn,
    add_usage,
    hosted_tools,
    offered,
    round_request,
)
from llmgw.tools.registry import check_tools

SPECS = check_tools(GatewayConfig.model_validate({
    "models": [{"name": "m", "engine": "fake", "model": "fake", "replicas": 1}],
    "tools": [{"name": "weather", "import_path": "llmgw.tools.examples:Weather"}]}))


@pytest.mark.parametrize(("tools", "expected"), [
    (None, None),
    ([{"type": "function", "function": {"name": "f"}}], None),
    ([{"type": "mcp", "server_label": "llmgw"}], HostedTools(None, 8)),
    ([{"type": "mcp", "server_label": "llmgw", "allowed_tools": ["weather"],
       "max_tool_rounds": 3}], HostedTools(frozenset({"weather"}), 3)),
    ([{"type": "mcp", "server_label": "llmgw", "require_approval": "never",
       "allowed_tools": {"tool_names": ["weather"], "read_only": True}}],
     HostedTools(frozenset({"weather"}), 8)),
], ids=["none", "function-only", "litellm", "rounds", "openai-responses"])
def test_hosted_entries(tools: Any, expected: HostedTools | None) -> None:
    assert hosted_tools({"tools": tools}) == expected


@pytest.mark.parametrize(("tools", "param"), [
    ([{"type": "mcp", "server_label": "llmgw"}, {"type": "mcp", "server_label": "llmgw"}],
     "tools"),
    ([{"type": "mcp", "server_label": "llmgw", "allowed_tools": "weather"}],
     "tools[0].allowed_tools"),
    ([{"type": "mcp", "server_label": "llmgw", "max_tool_rounds": True}],
     "tools[0].max_tool_rounds"),
], ids=["two-entries", "allowed-not-a-list", "rounds-bool"])
def test_refused_entries_name_the_field(tools: Any, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        hosted_tools({"tools": tools})
    assert caught.value.param == param


def test_one_choice_only() -> None:
    with pytest.raises(InvalidRequest, match="^n: ") as caught:
        hosted_tools({"n": 2, "tools": [{"type": "mcp", "server_label": "llmgw"}]})
    assert caught.value.param == "n"
    assert hosted_tools({"n": 2, "tools": []}) is None  # without the entry, n is the engine's


def test_round_request_puts_hosted_tools_after_the_clients() -> None:
    own = {"type": "function", "function": {"name": "lookup"}}
    parsed = {"model": "m", "tools": [{"type": "mcp", "server_label": "llmgw"}, own, "junk"]}
    specs = offered(HostedTools(frozenset({"weather"}), 8), SPECS)
    request = round_request(parsed, specs)
    assert [t["function"]["name"] if isinstance(t, dict) else t
            for t in request["tools"]] == ["lookup", "junk", "weather"]
    with pytest.raises(InvalidRequest, match="'weather' is both a tool of the request"):
        round_request({"tools": [{"type": "function", "function": {"name": "weather"}}]},
                      specs)
    hidden = offered(HostedTools(None, 8), SPECS, visible=lambda name: name != "weather")
    assert [s.name for s in hidden] == ["weather_forecast"]


def test_a_streamed_round_is_put_together_and_only_content_goes_on() -> None:
    turn = StreamTurn()
    chunks = [
        {"choices": [{"delta": {"role": "assistant", "content": "Let me "}}]},
        {"choices": [{"delta": {"content": "look."}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                                               "function": {"name": "weather",
                                                            "arguments": ""}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0,
                                               "function": {"arguments": '{"city":'}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0,
                                               "function": {"arguments": '"Oslo"}'}}]}}]},
        {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 3}},
    ]
    assert [turn.add(c) for c in chunks] == ["Let me ", "look.", None, None, None, None, None]
    done = turn.done()
    assert (done.content, done.finish_reason) == ("Let me look.", "tool_calls")
    assert done.tool_calls == [{"id": "c1", "type": "function", "function": {
        "name": "weather", "arguments": '{"city":"Oslo"}'}}]
    assert done.hosted_only({"weather"}) and not done.hosted_only({"other"})


def test_usage_is_summed_over_rounds() -> None:
    total: dict[str, int] = {}
    add_usage(total, {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7})
    add_usage(total, None)
    add_usage(total, {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13,
                      "prompt_tokens_details": {"cached_tokens": 5}})
    assert total == {"prompt_tokens": 14, "completion_tokens": 6, "total_tokens": 20}
