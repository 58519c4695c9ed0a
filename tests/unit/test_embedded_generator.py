"""The embedded engine's scheduler and decoding, in process on the demo model."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch

from llmgw.engines.demo_model import ensure_demo_model
from llmgw.engines.embedded.generator import Event, Generator
from llmgw.engines.embedded.model_runner import ModelRunner
from llmgw.engines.embedded.sampling import SamplingParams, select_token
from llmgw.engines.embedded.text_output import TextAssembler

EOS_IDS = (1, 4)
GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
PROMPTS = [
    "def main():",
    "import os\nimport sys\n\nclass Config:\n    def __init__(self, path):",
    "x",
    "The quick brown fox jumps over the lazy dog. " * 3,
]


@dataclass
class Model:
    runner: ModelRunner
    tokenizer: Any

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text).input_ids)

    def generator(self, **kwargs: Any) -> Generator:
        options: dict[str, Any] = {"eos_token_ids": EOS_IDS, "max_model_len": 2048} | kwargs
        return Generator(self.runner, self.tokenizer, **options)

    def reference(self, prompt: str, n: int) -> list[int]:
        """Greedy ids from transformers' own `generate`, EOS suppressed like min_tokens."""
        out = self.runner.model.generate(
            torch.tensor([self.ids(prompt)]),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
        )
        return [int(t) for t in out[0, len(self.ids(prompt)) :]]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path: Path = ensure_demo_model(tmp_path_factory.mktemp("cache"))
    hf = AutoModelForCausalLM.from_pretrained(path)
    return Model(ModelRunner(hf), AutoTokenizer.from_pretrained(path))


@dataclass
class Result:
    text: str
    tokens: int
    finish: str | None
    stop_reason: str | int | None
    deltas: list[str]


async def _collect(events: Any) -> Result:
    got: list[Event] = [e async for e in events]
    last = got[-1]
    return Result(
        "".join(e.text for e in got),
        last.completion_tokens,
        last.finish_reason,
        last.stop_reason,
        [e.text for e in got],
    )


async def run(gen: Generator, jobs: list[tuple[list[int], SamplingParams]]) -> list[Result]:
    """Submit every job before the thread starts, so they share the first batch."""
    handles = [gen.submit(ids, params) for ids, params in jobs]
    gen.start()
    try:
        return list(await asyncio.gather(*(_collect(h) for h in handles)))
    finally:
        gen.close()


async def run_one(model: Model, prompt: str, params: SamplingParams, **kw: Any) -> Result:
    return (await run(model.generator(**kw), [(model.ids(prompt), params)]))[0]


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "sequential"])
async def test_greedy_matches_transformers_generate(model: Model, batched: bool) -> None:
    result = await run_one(model, PROMPTS[1], GREEDY, batched=batched)
    expected = model.tokenizer.decode(model.reference(PROMPTS[1], 24), skip_special_tokens=True)
    assert (result.text, result.tokens, result.finish) == (expected, 24, "length")


async def test_greedy_is_deterministic(model: Model) -> None:
    first = await run_one(model, PROMPTS[0], GREEDY)
    second = await run_one(model, PROMPTS[0], GREEDY)
    assert first == second


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "sequential"])
async def test_batched_equals_alone(model: Model, batched: bool) -> None:
    # Different prompt lengths and budgets: rows are padded, finish and leave at
    # different steps, and the batch is re-packed each time.
    jobs = [(model.ids(p), replace(GREEDY, max_tokens=8 + 6 * i)) for i, p in enumerate(PROMPTS)]
    alone = [(await run(model.generator(), [job]))[0] for job in jobs]
    together = await run(model.generator(batched=batched), jobs)
    assert [r.text for r in together] == [r.text for r in alone]
    assert [r.tokens for r in together] == [8, 14, 20, 26]


async def test_late_joiner_and_queueing_keep_outputs(model: Model) -> None:
    """Requests join a running batch mid-flight and wait when the batch is full."""
    jobs = [(model.ids(p), replace(GREEDY, max_tokens=20)) for p in PROMPTS]
    alone = [(await run(model.generator(), [job]))[0].text for job in jobs]
    gen = model.generator(max_batch_size=2)
    first = gen.submit(*jobs[0])
    gen.start()
    try:
        head = await anext(first)  # the batch is running before the others arrive
        rest = [gen.submit(*job) for job in jobs[1:]]
        results = await asyncio.gather(_collect(first), *(_collect(h) for h in rest))
    finally:
        gen.close()
    assert [head.text + results[0].text] + [r.text for r in results[1:]] == alone


async def test_max_tokens_and_context_limit(model: Model) -> None:
    ids = model.ids(PROMPTS[0])
    capped = await run(model.generator(max_model_len=len(ids) + 3), [(ids, GREEDY)])
    budget = await run_one(model, PROMPTS[0], replace(GREEDY, max_tokens=5))
    assert [(r.tokens, r.finish) for r in capped + [budget]] == [(3, "length"), (5, "length")]


async def test_eos_stops_unless_ignored_or_below_min_tokens(model: Model) -> None:
    ids = model.reference(PROMPTS[1], 24)
    eos = ids[5]  # pretend a token the model emits early is EOS
    first = ids.index(eos) + 1
    plain = SamplingParams(max_tokens=24, temperature=0.0)
    cases = [plain, replace(plain, ignore_eos=True), replace(plain, min_tokens=first + 1)]
    results = [await run_one(model, PROMPTS[1], p, eos_token_ids=(eos,)) for p in cases]
    assert [(r.tokens, r.finish, r.stop_reason) for r in results[:2]] == [
        (first, "stop", None),
        (24, "length", None),
    ]
    assert results[2].tokens > first  # banned below min_tokens, so it ran past that point


async def test_stop_token_ids_report_the_token(model: Model) -> None:
    ids = model.reference(PROMPTS[1], 24)
    params = SamplingParams(max_tokens=24, temperature=0.0, stop_token_ids=frozenset({ids[3]}))
    result = await run_one(model, PROMPTS[1], params)
    assert (result.tokens, result.finish, result.stop_reason) == (
        ids.index(ids[3]) + 1,
        "stop",
        ids[3],
    )


@pytest.mark.parametrize("include", [False, True], ids=["cut", "included"])
async def test_stop_string_is_cut_and_never_half_streamed(model: Model, include: bool) -> None:
    full = (await run_one(model, PROMPTS[1], GREEDY)).text
    stop = full[10:14]
    params = replace(GREEDY, stop=("never-there", stop), include_stop_str_in_output=include)
    result = await run_one(model, PROMPTS[1], params)
    cut = full.index(stop) + (len(stop) if include else 0)
    assert (result.text, result.finish, result.stop_reason) == (full[:cut], "stop", stop)
    assert result.tokens < 24


def test_text_assembler_holds_back_partial_stop_strings(model: Model) -> None:
    text = "alpha beta STOP gamma"
    ids = model.tokenizer(text, add_special_tokens=False).input_ids
    assembler = TextAssembler(model.tokenizer, [], stop=("STOP",))
    deltas = [assembler.push(t) for t in ids]
    emitted = "".join(deltas)
    assert (emitted, assembler.stop_reason) == ("alpha beta ", "STOP")
    assert all("S" not in d for d in deltas)


async def test_seed_reproduces_sampling_even_in_a_batch(model: Model) -> None:
    sampled = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.95, top_k=200, seed=7)
    ids = model.ids(PROMPTS[0])
    alone = (await run(model.generator(), [(ids, sampled)]))[0]
    crowd = [(model.ids(p), replace(GREEDY, max_tokens=10)) for p in PROMPTS]
    batched = (await run(model.generator(), [*crowd, (ids, sampled)]))[-1]
    other_seed = (await run(model.generator(), [(ids, replace(sampled, seed=8))]))[0]
    assert batched.text == alone.text
    assert other_seed.text != alone.text


async def test_abort_frees_the_slot(model: Model) -> None:
    gen = model.generator()
    handle = gen.submit(model.ids(PROMPTS[0]), replace(GREEDY, max_tokens=2000))
    gen.start()
    try:
        await anext(handle)
        handle.abort()
        # The inbox is FIFO: once a later request finished, the abort was applied.
        after = await _collect(gen.submit(model.ids("x"), replace(GREEDY, max_tokens=2)))
        stats = gen.stats()
    finally:
        gen.close()
    assert (after.tokens, stats.running, stats.waiting, stats.aborted_total) == (2, 0, 0, 1)


async def test_abort_of_a_waiting_request(model: Model) -> None:
    gen = model.generator(max_batch_size=1)
    long = replace(GREEDY, max_tokens=2000)
    running = gen.submit(model.ids(PROMPTS[0]), long)
    queued = gen.submit(model.ids(PROMPTS[1]), long)
    queued.abort()  # before the thread starts: it never gets a batch slot
    gen.start()
    try:
        await anext(running)
        running.abort()
        after = await _collect(gen.submit(model.ids("x"), replace(GREEDY, max_tokens=2)))
        stats = gen.stats()
    finally:
        gen.close()
    assert [e async for e in queued] == []
    assert (after.tokens, stats.running, stats.waiting, stats.aborted_total) == (2, 0, 0, 2)


def _logits(values: list[float]) -> Any:
    return torch.tensor(values)


@pytest.mark.parametrize(
    ("params", "banned", "expected"),
    [
        (SamplingParams(1, temperature=0.0), (), 2),
        (SamplingParams(1, temperature=0.0), (2,), 1),
        (SamplingParams(1, temperature=5.0, top_k=1, seed=1), (), 2),
        (SamplingParams(1, temperature=5.0, top_p=0.01, seed=1), (), 2),
        (SamplingParams(1, temperature=5.0, top_k=1, seed=1), (2,), 1),
    ],
    ids=["greedy", "greedy-banned", "top-k-1", "tiny-top-p", "top-k-after-ban"],
)
def test_select_token(params: SamplingParams, banned: tuple[int, ...], expected: int) -> None:
    rng = torch.Generator().manual_seed(0)
    ids = torch.tensor(banned, dtype=torch.long)
    assert select_token(_logits([0.0, 1.0, 3.0, -1.0]), params, rng, ids) == expected


def _draws(params: SamplingParams, seed: int) -> Iterator[int]:
    rng = torch.Generator().manual_seed(seed)
    for _ in range(200):
        yield select_token(_logits([0.0, 1.0, 3.0, -1.0]), params, rng)


def test_top_p_keeps_the_nucleus() -> None:
    # softmax([0, 1, 3, -1]) ~ [0.04, 0.11, 0.84, 0.01]: top_p 0.9 keeps ids 2 and 1.
    assert set(_draws(SamplingParams(1, temperature=1.0, top_p=0.9), 0)) == {1, 2}
