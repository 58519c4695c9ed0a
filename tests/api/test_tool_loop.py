"""The server-side tool loop on /v1/chat/completions, through a real gateway in front of
two fake engine processes in their scripted tool-call mode (a fake: no model that runs on
this CPU box emits tool calls; the fake follows OpenAI's tool-call wire format, see
llmgw/engines/fake_tools.py), driven by the real `openai` client."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.support import Server, start_gateway

HOSTED = {"type": "mcp", "server_label": "llmgw", "require_approval": "never"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("loop")
    config = {
        "models": [{"name": "agent", "engine": "fake", "model": "fake", "replicas": 2,
                    "engine_args": {"scripted_tool_calls": True}, "routing": "round-robin"},
                   # One request at a time in all: a loop whose tool calls this model
                   # must let go of its slot while the tool runs.
                   {"name": "solo", "engine": "fake", "model": "fake", "replicas": 1,
                    "engine_args": {"scripted_tool_calls": True},
                    "admission": {"max_in_flight_per_replica": 1, "queue_timeout_s": 20}}],
        "tools": [
            {"name": "weather", "import_path": "llmgw.tools.examples:Weather", "replicas": 0},
            {"name": "rec", "import_path": "tests.fakes.tools:Recorder", "replicas": 0,
             "timeout_s": 1, "init_args": {"gate": str(tmp / "never")}},
            {"name": "comp", "import_path": "tests.fakes.tools:Composer", "replicas": 0},
            {"name": "compw", "import_path": "tests.fakes.tools:Composer", "replicas": 1,
             "init_args": {"own_name": "compw_recurse", "model": "solo"}},
        ],
    }
    server = start_gateway(config, tmp)
    yield server
    server.stop()


@pytest.fixture
def client(gateway: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused",
                       max_retries=0) as client:
        yield client


def engines(gateway: Server) -> dict[str, str]:
    """Replica id -> the engine's own URL, from the launcher's lines in the gateway log."""
    return dict(re.findall(r"(agent-\d+) ready at (http://\S+)", gateway.output()))


def served(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    return float(re.search(r"llmgw_engine_requests_served_total (\S+)", text).group(1))  # type: ignore[union-attr]


def sample(gateway: Server, name: str) -> float:
    lines = [line for line in httpx.get(gateway.url + "/metrics").text.splitlines()
             if line.startswith(name + " ")]
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


def tool_calls(gateway: Server, tool: str, outcome: str = "ok") -> float:
    return sample(gateway, f'llmgw_tool_calls_total{{outcome="{outcome}",tool="{tool}"}}')


def three_round_loops(gateway: Server) -> float:
    bucket = 'llmgw_tool_loop_rounds_bucket{{le="{}",model="agent"}}'
    return sample(gateway, bucket.format("3.0")) - sample(gateway, bucket.format("2.0"))


def weather_of(gateway: Server, city: str) -> str:
    return str(httpx.post(gateway.url + "/v1/tools/weather",
                          json={"arguments": {"city": city}}).json()["output"])


def test_one_answer_after_the_hosted_call_all_rounds_on_one_replica(
    gateway: Server, client: openai.OpenAI,
) -> None:
    urls = engines(gateway)
    before = {rid: served(url) for rid, url in urls.items()}
    raw = client.chat.completions.with_raw_response.create(
        model="agent", messages=[{"role": "user", "content": "weather?"}],
        tools=[{**HOSTED, "allowed_tools": ["weather"]}])  # type: ignore[list-item]
    answer = raw.parse()
    assert answer.choices[0].message.content == f"final: {weather_of(gateway, 'x')}"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.tool_calls is None
    replica = raw.headers["x-llmgw-replica"]
    assert {rid: served(url) - before[rid] for rid, url in urls.items()} == {
        rid: 2.0 if rid == replica else 0.0 for rid in urls}
    # The second round carried the call and its result, and only the hosted tool.
    second = orjson.loads(httpx.get(urls[replica] + "/fake/last_request").content)
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "tool"]
    assert second["messages"][1]["tool_calls"][0]["function"] == {
        "name": "weather", "arguments": '{"city":"x"}'}
    assert [t["function"]["name"] for t in second["tools"]] == ["weather"]
    # Usage: both rounds, as the engine counts each when asked directly.
    first = {**second, "messages": second["messages"][:1], "stream": False}
    rounds = [httpx.post(urls[replica] + "/v1/chat/completions", json=body).json()["usage"]
              for body in (first, {**second, "stream": False})]
    assert answer.usage is not None
    assert answer.usage.model_dump(exclude_none=True) == {
        k: rounds[0][k] + rounds[1][k]
        for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def test_streamed_one_message_one_finish_reason_usage_summed(
    gateway: Server, client: openai.OpenAI,
) -> None:
    chunks = list(client.chat.completions.create(
        model="agent", messages=[{"role": "user", "content": "two rounds tool_rounds=2"}],
        tools=[HOSTED], stream=True, stream_options={"include_usage": True}))  # type: ignore[list-item]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert [d.role for d in deltas if d.role] == ["assistant"]
    assert all(d.tool_calls is None for d in deltas)  # hosted calls never shown
    text = "".join(d.content or "" for d in deltas)
    assert text == f"final: {weather_of(gateway, 'x')}"
    finishes = [c.choices[0].finish_reason for c in chunks
                if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_a_client_tool_call_comes_back_untouched(gateway: Server,
                                                 client: openai.OpenAI) -> None:
    own = {"type": "function", "function": {
        "name": "lookup", "description": "The client's own tool",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}},
                       "required": ["q"]}}}
    before = tool_calls(gateway, "weather")
    for stream in (False, True):
        kwargs: dict[str, Any] = {"model": "agent", "tools": [own, HOSTED],
                                  "messages": [{"role": "user", "content": "call=lookup"}]}
        if stream:
            chunks = list(client.chat.completions.create(**kwargs, stream=True))
            calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
            finish = [c.choices[0].finish_reason for c in chunks
                      if c.choices and c.choices[0].finish_reason]
            call = calls[0]
        else:
            answer = client.chat.completions.create(**kwargs)
            finish = [answer.choices[0].finish_reason]
            call = answer.choices[0].message.tool_calls[0]  # type: ignore[index,assignment]
        assert finish == ["tool_calls"]
        assert (call.function.name, call.function.arguments) == ("lookup", '{"q":"x"}')  # type: ignore[union-attr]
    assert tool_calls(gateway, "weather") == before  # the gateway ran nothing


def test_the_round_cap_ends_with_an_answer_in_words(gateway: Server,
                                                    client: openai.OpenAI) -> None:
    before, loops = tool_calls(gateway, "weather"), three_round_loops(gateway)
    answer = client.chat.completions.create(
        model="agent", messages=[{"role": "user", "content": "tool_rounds=5"}],
        tools=[{**HOSTED, "max_tool_rounds": 2}])  # type: ignore[list-item]
    # Two rounds of calls, then tool_choice "none": the fake's plain answer.
    assert tool_calls(gateway, "weather") - before == 2
    assert three_round_loops(gateway) - loops == 1  # two rounds of calls, one answer
    assert answer.choices[0].message.content == " ".join(f"tok{i}" for i in range(16))


def test_a_tool_error_goes_back_to_the_model(gateway: Server, client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model="agent", messages=[{"role": "user", "content": "call=rec_fail"}],
        tools=[{**HOSTED, "allowed_tools": {"tool_names": ["rec_fail"]}}])  # type: ignore[list-item]
    assert answer.choices[0].message.content == (
        "final: error: tool 'rec_fail' failed: ValueError: x")


def test_a_failure_mid_loop_is_an_error_never_a_silent_200(gateway: Server) -> None:
    body = {"model": "agent", "messages": [{"role": "user", "content": "call=rec_slow"}],
            "tools": [{**HOSTED, "allowed_tools": ["rec_slow"]}]}
    plain = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=30)
    assert plain.status_code == 504
    assert plain.json()["error"]["code"] == "tool_timeout"
    streamed = httpx.post(gateway.url + "/v1/chat/completions", json={**body, "stream": True},
                          timeout=30)
    assert streamed.status_code == 200
    events = [e.removeprefix("data: ") for e in streamed.text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    assert orjson.loads(events[-2])["error"]["code"] == "tool_timeout"
    assert all("tool_calls" not in e for e in events)


@pytest.mark.parametrize(("entry", "param", "message"), [
    ({**HOSTED, "server_label": "other"}, "tools[0].server_label",
     "tools[0].server_label: must be 'llmgw'"),
    ({**HOSTED, "require_approval": "always"}, "tools[0].require_approval",
     "tools[0].require_approval: only 'never' is supported"),
    ({**HOSTED, "allowed_tools": ["nope"]}, "tools.allowed_tools",
     "allowed_tools: no tool named 'nope'"),
    ({**HOSTED, "max_tool_rounds": 0}, "tools[0].max_tool_rounds",
     "tools[0].max_tool_rounds: must be an integer in 1..32"),
], ids=["label", "approval", "unknown-tool", "rounds"])
def test_bad_hosted_entries_are_400s_naming_the_field(
    gateway: Server, entry: dict[str, Any], param: str, message: str,
) -> None:
    answer = httpx.post(gateway.url + "/v1/chat/completions", json={
        "model": "agent", "messages": [{"role": "user", "content": "hi"}], "tools": [entry]})
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == param
    assert answer.json()["error"]["message"].startswith(message)


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_streamed"])
async def test_openai_agents_sdk_runs_a_gateway_tool_over_mcp(gateway: Server,
                                                              streamed: bool) -> None:
    """A black-box agent: the OpenAI Agents SDK lists the gateway's tools over /mcp, offers
    them to the model through /v1/chat/completions, runs the model's call over /mcp and
    sends the result back (the client-side loop, as agent frameworks run it)."""
    from agents import Agent, OpenAIChatCompletionsModel, Runner, set_tracing_disabled
    from agents.mcp import MCPServerStreamableHttp

    set_tracing_disabled(True)  # else it exports traces to OpenAI
    llm = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    model = OpenAIChatCompletionsModel(model="agent", openai_client=llm)
    async with llm, MCPServerStreamableHttp(params={"url": gateway.url + "/mcp"},
                                            cache_tools_list=True) as mcp:
        agent = Agent(name="forecaster", instructions="Use the tools.", model=model,
                      mcp_servers=[mcp])
        if streamed:
            run = Runner.run_streamed(agent, "weather?")
            async for _ in run.stream_events():
                pass
            output = run.final_output
        else:
            output = (await Runner.run(agent, "weather?")).final_output
    assert output == f"final: {weather_of(gateway, 'x')}"


@pytest.mark.parametrize("deployment", ["comp", "compw"], ids=["in-process", "worker"])
def test_tools_call_tools_and_models_through_the_gateway(gateway: Server,
                                                         deployment: str) -> None:
    def call(tool: str, arguments: dict[str, Any]) -> Any:
        answer = httpx.post(f"{gateway.url}/v1/tools/{deployment}_{tool}",
                            json={"arguments": arguments}, timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json()["output"]

    assert call("relay", {"city": "Oslo"}) == f"via: {weather_of(gateway, 'Oslo')}"
    assert call("ask", {"question": "hi"}) == "tok0 tok1 tok2"
    # A tool calling itself is refused at the depth limit (llmgw.context.MAX_DEPTH).
    assert call("recurse", {"n": 0}) == 4


def test_a_refused_depth_is_a_400(gateway: Server) -> None:
    answer = httpx.post(gateway.url + "/v1/tools/weather", headers={"x-llmgw-depth": "4"},
                        json={"arguments": {"city": "Oslo"}})
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "tool_depth_exceeded"


@pytest.mark.parametrize("stream", [False, True])
def test_a_loop_whose_tool_calls_its_model_does_not_deadlock_admission(
    gateway: Server, client: openai.OpenAI, stream: bool,
) -> None:
    """`solo` takes one request at a time; its loop runs `compw_ask`, which asks `solo`
    while the loop's request is open: the loop lets go of its slot while tools run."""
    kwargs: dict[str, Any] = {
        "model": "solo", "messages": [{"role": "user", "content": "ask"}],
        "tools": [{**HOSTED, "allowed_tools": ["compw_ask"]}]}
    if stream:
        chunks = list(client.chat.completions.create(**kwargs, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        text = client.chat.completions.create(**kwargs).choices[0].message.content or ""
    assert text == "final: tok0 tok1 tok2"
