"""Agent frameworks over HTTP against a real gateway: the OpenAI Agents SDK (through
``OpenAIChatCompletionsModel`` and ``OpenAIResponsesModel``) and LangChain's ``ChatOpenAI``
and ``OpenAIEmbeddings``, streamed and not.

The engines are the fake engine, which follows OpenAI's wire format: a tool call is
scripted by a ``[[call NAME {json}]]`` marker in the user's message when the request
carries tools, and a tool result is answered with ``tool said: <result>``
(llmgw.engines.fake_tools). No test here reaches the internet: tracing is off and every
client points at the gateway on loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from agents import (
    Agent,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from openai import AsyncOpenAI

from llmgw.engines.fake_endpoints import fake_embedding
from tests.support import Server

ASK = 'Weather, please. [[call get_weather {"city": "Paris"}]]'
ANSWER = "tool said: sunny in Paris"
CALLS: list[str] = []


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    CALLS.append(city)
    return f"sunny in {city}"


@tool("get_weather")
def weather_tool(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


@pytest.fixture(autouse=True)
def no_tracing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    set_tracing_disabled(True)  # the Agents SDK would export traces to OpenAI
    monkeypatch.delenv("LANGSMITH_TRACING", raising=False)
    monkeypatch.delenv("LANGCHAIN_TRACING_V2", raising=False)
    CALLS.clear()
    yield


@pytest.fixture
async def async_client(gateway: Server) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0) as c:
        yield c


def agent(client: AsyncOpenAI) -> Agent[Any]:
    return Agent(name="forecaster", instructions="Use the tool.", tools=[get_weather],
                 model=OpenAIChatCompletionsModel("fake", client))


async def test_agents_sdk_runs_a_tool_loop(async_client: AsyncOpenAI) -> None:
    result = await Runner.run(agent(async_client), ASK)
    assert result.final_output == ANSWER
    assert CALLS == ["Paris"]
    kinds = [item.type for item in result.new_items]
    assert kinds == ["tool_call_item", "tool_call_output_item", "message_output_item"]


async def test_agents_sdk_streams_a_tool_loop(async_client: AsyncOpenAI) -> None:
    result = Runner.run_streamed(agent(async_client), ASK)
    names = [event.name async for event in result.stream_events()
             if event.type == "run_item_stream_event"]
    assert result.final_output == ANSWER
    assert CALLS == ["Paris"]
    assert names == ["tool_called", "tool_output", "message_output_created"]


@pytest.mark.parametrize(("api", "streamed"), [
    ("chat", False), ("chat", True), ("responses", False), ("responses", True)],
    ids=["chat-run", "chat-run-streamed", "responses-run", "responses-run-streamed"])
async def test_agents_sdk_without_a_tool_call(async_client: AsyncOpenAI, api: str,
                                              streamed: bool) -> None:
    """A plain answer through either model class: /v1/chat/completions or /v1/responses."""
    model: Any = OpenAIResponsesModel("fake", async_client) if api == "responses" else \
        OpenAIChatCompletionsModel("fake", async_client)
    plain = Agent(name="plain", model=model)
    if streamed:
        result: Any = Runner.run_streamed(plain, "hello")
        async for _ in result.stream_events():
            pass
    else:
        result = await Runner.run(plain, "hello")
    assert result.final_output == " ".join(f"tok{i}" for i in range(16))
    # A chat stream carries usage only when asked (ModelSettings.include_usage): the SDK
    # does not ask, and the gateway strips the usage chunk it asked for itself.
    usage = 0 if api == "chat" and streamed else 16
    assert result.context_wrapper.usage.output_tokens == usage


def chat_model(gateway: Server, **extra: Any) -> ChatOpenAI:
    return ChatOpenAI(model="fake", base_url=gateway.url + "/v1", api_key="x",  # type: ignore[arg-type]
                      max_retries=0, **extra)


def test_langchain_invoke_and_stream(gateway: Server) -> None:
    llm = chat_model(gateway, max_tokens=4)
    reply = llm.invoke("hello")
    assert reply.content == "tok0 tok1 tok2 tok3"
    assert reply.usage_metadata is not None and reply.usage_metadata["output_tokens"] == 4
    pieces = [chunk.content for chunk in llm.stream("hello")]
    assert "".join(str(p) for p in pieces) == reply.content
    assert len([p for p in pieces if p]) == 4  # token by token


@pytest.mark.parametrize("streamed", [False, True], ids=["invoke", "stream"])
def test_langchain_tool_call_and_its_result(gateway: Server, streamed: bool) -> None:
    llm = chat_model(gateway).bind_tools([weather_tool])
    if streamed:
        chunks = list(llm.stream([HumanMessage(ASK)]))
        call: Any = chunks[0]
        for chunk in chunks[1:]:
            call = call + chunk  # LangChain merges the argument pieces
        assert len(chunks) > 3  # the arguments arrived in pieces
    else:
        call = llm.invoke([HumanMessage(ASK)])
    assert isinstance(call, AIMessage)
    assert [(c["name"], c["args"], c["id"]) for c in call.tool_calls] == [
        ("get_weather", {"city": "Paris"}, "call_fake_0")]
    result = weather_tool.invoke(call.tool_calls[0]["args"])
    final = llm.invoke([HumanMessage(ASK), call,
                        ToolMessage(result, tool_call_id=call.tool_calls[0]["id"])])
    assert final.content == ANSWER


def test_langchain_embeddings(gateway: Server) -> None:
    # check_embedding_ctx_length would tokenize with tiktoken, which downloads its tables.
    embeddings = OpenAIEmbeddings(model="fake", base_url=gateway.url + "/v1", api_key="x",  # type: ignore[arg-type]
                                  check_embedding_ctx_length=False, max_retries=0)
    vectors = embeddings.embed_documents(["a b", "c"])
    assert vectors == [pytest.approx(fake_embedding(t, 8), rel=1e-6) for t in ("a b", "c")]
    assert embeddings.embed_query("a b") == pytest.approx(vectors[0], rel=1e-6)
    assert json.dumps(vectors)  # plain floats, decoded from the SDK's base64
