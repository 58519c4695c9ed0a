"""The resilience layer on disaggregated requests: a failed leg counts against its
replica (outlier ejection, capped per pool), an answer ends its streak, and a leg tried
again elsewhere spends the model's retry budget, on both protocols' flows.

In process, with scripted engines: each answers, or raises the error an engine client
raises for a refused connection, a reset or a 5xx. The legs' I/O against real (and fake
SGLang) servers is covered by test_vllm_pd_e2e.py and test_sglang_pd.py."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from llmgw.config import ConditionalPDConfig, OutlierConfig, RetryBudgetConfig
from llmgw.disagg.legs import Legs
from llmgw.disagg.orchestrator import Disaggregation, Flow
from llmgw.disagg.sglang_flow import SGLangFlow
from llmgw.disagg.vllm_flow import VLLMFlow
from llmgw.errors import (
    AnswerBroken,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamFailed,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from llmgw.metrics import Metrics, ModelMetrics, PDMetrics, ReplicaMetrics
from llmgw.pool import Replica
from llmgw.resilience.budget import RetryBudget
from llmgw.routing.registry import make_policy
from llmgw.types import RequestContext

ANSWER = b'{"choices":[{"message":{"content":"ok"}}],"kv_transfer_params":{"x":1}}'


class Answer:
    status = 200

    async def read(self) -> bytes:
        return ANSWER

    async def event_blocks(self) -> AsyncIterator[bytes]:
        yield b'data: {"choices":[{"delta":{"content":"ok"}}]}\n\n'

    def close(self) -> None:
        pass


class CutAnswer(Answer):
    """Its headers came, then the connection broke: the engine died sending the body."""

    async def read(self) -> bytes:
        raise AnswerBroken("engine connection broke: engine closed the connection")


class EndlessAnswer(Answer):
    """Its headers came; its body never ends."""

    async def read(self) -> bytes:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class ScriptedEngine:
    """Raises ``error`` on every send, or answers (with ``answer``); with ``silent``, a
    send never gets its headers."""

    url = "http://127.0.0.1:1"

    def __init__(self, error: UpstreamError | None = None,
                 answer: type[Answer] = Answer) -> None:
        self.error, self.answer, self.sent, self.aborted = error, answer, 0, 0
        self.silent = False

    async def send(self, path: str, body: bytes) -> Answer:
        self.sent += 1
        if self.silent:
            await asyncio.Event().wait()
        if self.error is not None:
            raise self.error
        return self.answer()

    async def abort(self, request_id: str) -> bool:
        self.aborted += 1
        return True


def fleet(flow: Flow, errors: dict[str, UpstreamError], budget: RetryBudget,
          cut: frozenset[str] = frozenset()) -> tuple[Disaggregation, dict[str, Replica]]:
    """``cut``: replicas whose answers break off after their headers."""
    metrics = Metrics()
    legs = Legs(make_policy("round-robin", random.Random(1)),
                make_policy("round-robin", random.Random(2)), PDMetrics(metrics, "m"),
                max_attempts=2, budget=budget)
    d = Disaggregation("m", legs, flow, ConditionalPDConfig(enabled=False))  # always split
    replicas = {}
    for rid in ("p0", "p1", "d0", "d1"):
        scripted = ScriptedEngine(errors.get(rid), CutAnswer if rid in cut else Answer)
        replica = Replica(rid, "m", scripted,  # type: ignore[arg-type]
                          ReplicaMetrics(metrics, "m", rid, "round-robin"),
                          role="prefill" if rid.startswith("p") else "decode")
        replica.outlier.configure(OutlierConfig(consecutive_failures=1))
        replica.set_health(True)
        d.added(replica)
        replicas[rid] = replica
    return d, replicas


def engine(replica: Replica) -> ScriptedEngine:
    assert isinstance(replica.engine, ScriptedEngine)
    return replica.engine


def ctx(stream: bool) -> RequestContext:
    return RequestContext(request_id="r", model="m", endpoint="chat", stream=stream,
                          prompt="hello")


def open_request(d: Disaggregation, stream: bool) -> Replica:
    body = b'{"model":"m","messages":[{"role":"user","content":"hello"}],"stream":%s}' % (
        b"true" if stream else b"false")

    async def run() -> Replica:
        opened = await d.open(ctx(stream), "/v1/chat/completions", body, "r", None, False)
        opened.upstream.close()
        opened.replica.release()
        return opened.replica
    return asyncio.run(run())


@pytest.mark.parametrize("flow", [VLLMFlow(5), SGLangFlow(5, random.Random(0))],
                         ids=["vllm", "sglang"])
def test_a_failing_decode_leg_is_ejected_and_the_request_served_by_the_other(
        flow: Flow) -> None:
    budget = RetryBudget(RetryBudgetConfig())
    d, r = fleet(flow, {"d0": UpstreamFailed("engine 500")}, budget)
    for _ in range(3):  # round-robin would send every other request to d0
        assert open_request(d, stream=True).id == "d1"
    assert engine(r["d0"]).sent == 1  # the one failure ejected it (and only it)
    assert r["d0"].outlier.state == "ejected" and r["d1"].outlier.state == "in"
    assert r["p0"].outlier.failures == r["p1"].outlier.failures == 0


@pytest.mark.parametrize("flow", [VLLMFlow(5), SGLangFlow(5, random.Random(0))],
                         ids=["vllm", "sglang"])
def test_a_decode_answer_cut_after_its_headers_is_served_by_the_other_decode_replica(
        flow: Flow) -> None:
    d, r = fleet(flow, {}, RetryBudget(RetryBudgetConfig()), cut=frozenset({"d0"}))

    async def run() -> tuple[str, bytes]:
        opened = await d.open(ctx(False), "/v1/chat/completions",
                              b'{"model":"m","messages":[],"stream":false}', "r", None, False)
        try:
            return opened.replica.id, await opened.upstream.read()
        finally:
            opened.upstream.close()
            opened.replica.release()

    assert asyncio.run(run()) == ("d1", ANSWER)  # round-robin ranked d0 first
    assert engine(r["d0"]).sent == 1 and r["d0"].outlier.state == "ejected"
    assert r["d1"].outlier.failures == 0


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_a_decode_leg_past_the_requests_deadline_is_not_sent_again(stream: bool) -> None:
    """The request's own limit ran out on the first decode replica (a stream's headers,
    or a whole answer's body, never came): no other replica has time left, so the client
    gets the timeout and no decode replica gets a request past its deadline."""
    d, r = fleet(VLLMFlow(5), {}, RetryBudget(RetryBudgetConfig()))
    if stream:
        engine(r["d0"]).silent = True
    else:
        engine(r["d0"]).answer = EndlessAnswer

    async def run() -> None:
        deadline = asyncio.get_running_loop().time() + 0.2
        await d.open(ctx(stream), "/v1/chat/completions",
                     b'{"model":"m","messages":[],"stream":false}', "r", deadline, False)

    with pytest.raises(UpstreamTimeout, match="the request exceeded its time limit"):
        asyncio.run(run())  # round-robin ranked d0 first
    assert (engine(r["d0"]).sent, engine(r["d1"]).sent) == (1, 0)
    assert r["d0"].metrics.retries._value.get() == r["d1"].metrics.retries._value.get() == 0


def test_a_prefill_replica_that_cannot_be_reached_is_counted_and_skipped() -> None:
    budget = RetryBudget(RetryBudgetConfig())
    d, r = fleet(VLLMFlow(5), {"p0": UpstreamUnreachable("refused")}, budget)
    for _ in range(2):  # round-robin ranks p0 first for one of them
        open_request(d, stream=False)
    assert (engine(r["p0"]).sent, engine(r["p1"]).sent) == (1, 2)
    assert r["p0"].outlier.state == "ejected" and not r["p0"].healthy
    assert r["p1"].outlier.failures == 0


def test_an_sglang_pair_cut_off_before_its_stream_began_is_retried_on_another_pair() -> None:
    budget = RetryBudget(RetryBudgetConfig())
    d, r = fleet(SGLangFlow(5, random.Random(0)), {"d0": UpstreamDisconnected("reset")},
                 budget)
    assert open_request(d, stream=True).id == "d1"
    assert engine(r["d0"]).aborted == 1  # both legs of the first pair were abandoned
    assert r["d0"].outlier.state == "ejected"


def test_legs_spend_the_models_retry_budget() -> None:
    denied: list[None] = []
    budget = RetryBudget(RetryBudgetConfig(ratio=0, min_retries=0),
                         on_denied=lambda: denied.append(None))
    d, r = fleet(VLLMFlow(5), {"d0": UpstreamFailed("engine 500"),
                               "d1": UpstreamFailed("engine 500")}, budget)
    with pytest.raises(UpstreamFailed):
        open_request(d, stream=True)
    assert engine(r["d0"]).sent + engine(r["d1"]).sent == 1 and len(denied) == 1


def test_the_budget_reports_refusals_on_the_models_counter() -> None:
    metrics = Metrics()
    model = ModelMetrics(metrics, "m")
    budget = RetryBudget(RetryBudgetConfig(ratio=0, min_retries=1),
                         on_denied=model.retries_denied.inc)
    assert [budget.try_retry() for _ in range(3)] == [True, False, False]
    assert metrics.registry.get_sample_value("llmgw_retries_denied_total",
                                             {"model": "m"}) == 2
