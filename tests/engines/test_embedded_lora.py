"""Multi-LoRA in the embedded engine: a real server process, the official `openai` SDK.

The engine starts with two adapters (`--lora-modules`) and room for three; tests
that load more unload them again, so each leaves the server as it found it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from llmgw.engines.demo_lora import (
    build_demo_adapters,
    write_high_rank_adapter,
    write_incomplete_adapter,
    write_wrong_base_adapter,
)
from llmgw.engines.demo_model import ensure_demo_model
from llmgw.engines.embedded.__main__ import parse_args
from llmgw.engines.embedded.adapters import AdapterManager, LoRAOptions
from llmgw.engines.embedded.decoders import BatchedDecoder, Decoder, SequentialDecoder
from llmgw.engines.embedded.generator import Generator
from llmgw.engines.embedded.lora_files import read_adapter
from llmgw.engines.embedded.lora_layers import AdapterBank
from llmgw.engines.embedded.model_runner import ModelRunner
from llmgw.errors import InvalidRequest, ModelNotFound
from tests.engines.test_embedded_server import GREEDY, PROMPT, RUNNING
from tests.support import Server, engine_counter, free_port, wait_until

MAX_LORAS, MAX_RANK = 3, 16
STATIC = ["demo-lora-0", "demo-lora-1"]
LONG: dict[str, Any] = {"temperature": 0, "max_tokens": 300, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def adapters() -> dict[str, Path]:
    return build_demo_adapters(4)  # the cache the engine's `--model demo` uses too


def _engine_argv(port: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "llmgw.engines.embedded", "--model", "demo",
        "--served-model-name", "demo", "--port", str(port), "--log-level", "warning",
        "--enable-lora", "--max-loras", str(MAX_LORAS), "--max-lora-rank", str(MAX_RANK),
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def engine(adapters: dict[str, Path]) -> Iterator[Server]:
    port = free_port()
    modules = [f"{name}={adapters[name]}" for name in STATIC]
    server = Server(_engine_argv(port, "--lora-modules", *modules), port, "/health")
    yield server
    server.stop()


@pytest.fixture
def client(engine: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=engine.url + "/v1", api_key="x", max_retries=0) as c:
        yield c


def load(engine: Server, name: str, path: Path | str, **extra: Any) -> httpx.Response:
    body = {"lora_name": name, "lora_path": str(path), **extra}
    return httpx.post(engine.url + "/v1/load_lora_adapter", json=body, timeout=30)


def unload(engine: Server, name: str) -> httpx.Response:
    return httpx.post(engine.url + "/v1/unload_lora_adapter", json={"lora_name": name})


@contextmanager
def loaded(engine: Server, name: str, path: Path) -> Iterator[None]:
    response = load(engine, name, path)
    assert response.status_code == 200, response.text
    try:
        yield
    finally:
        assert unload(engine, name).status_code == 200


def complete(client: openai.OpenAI, model: str, prompt: str = PROMPT) -> str:
    reply = client.completions.create(model=model, prompt=prompt, **GREEDY)
    assert reply.model == model  # vLLM answers under the adapter's name
    return reply.choices[0].text


def model_ids(client: openai.OpenAI) -> list[str]:
    return [m.id for m in client.models.list().data]


def lora_info(engine: Server) -> dict[str, str]:
    """The labels of vLLM's `vllm:lora_requests_info` series."""
    text = httpx.get(engine.url + "/metrics").text
    for family in text_string_to_metric_families(text):
        if family.name == "vllm:lora_requests_info":
            (sample,) = family.samples
            return dict(sample.labels)
    raise AssertionError("vllm:lora_requests_info is missing")


def test_models_list_adapters_like_vllm(engine: Server, adapters: dict[str, Path]) -> None:
    cards = httpx.get(engine.url + "/v1/models").json()["data"]
    picked = [{k: c[k] for k in ("id", "root", "parent", "max_model_len")} for c in cards]
    assert picked == [
        {"id": "demo", "root": str(ensure_demo_model()), "parent": None, "max_model_len": 2048},
        *(
            {"id": n, "root": str(adapters[n]), "parent": "demo", "max_model_len": None}
            for n in STATIC
        ),
    ]


def test_each_adapter_has_its_own_output(client: openai.OpenAI) -> None:
    texts = {model: complete(client, model) for model in ["demo", *STATIC]}
    assert len(set(texts.values())) == 3, texts
    chat = client.chat.completions.create(
        model="demo-lora-1", messages=[{"role": "user", "content": "hi"}], **GREEDY
    )
    assert chat.model == "demo-lora-1" and chat.usage is not None
    assert chat.usage.completion_tokens == 40


def test_runtime_load_equals_load_at_start(
    engine: Server, client: openai.OpenAI, adapters: dict[str, Path]
) -> None:
    at_start = complete(client, "demo-lora-0")
    with loaded(engine, "again-0", adapters["demo-lora-0"]):
        assert complete(client, "again-0") == at_start
        assert model_ids(client) == ["demo", *STATIC, "again-0"]
    assert model_ids(client) == ["demo", *STATIC]


def test_load_unload_cycle_and_vllm_messages(
    engine: Server, client: openai.OpenAI, adapters: dict[str, Path]
) -> None:
    path = adapters["demo-lora-2"]
    first = load(engine, "extra", path)
    assert (first.status_code, first.text) == (
        200,
        "Success: LoRA adapter 'extra' added successfully.",
    )
    again = load(engine, "extra", path)
    assert again.status_code == 400
    assert again.json()["error"]["message"] == (
        "The lora adapter 'extra' has already been loaded. If you want to load the adapter "
        "in place, set 'load_inplace' to True."
    )
    extra = complete(client, "extra")
    assert extra not in {complete(client, n) for n in ["demo", *STATIC]}
    gone = unload(engine, "extra")
    assert (gone.status_code, gone.text) == (
        200,
        "Success: LoRA adapter 'extra' removed successfully.",
    )
    missing = unload(engine, "extra")
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "The lora adapter 'extra' cannot be found."
    with pytest.raises(openai.NotFoundError, match="The model `extra` does not exist"):
        complete(client, "extra")


def test_load_inplace_swaps_the_weights(
    engine: Server, client: openai.OpenAI, adapters: dict[str, Path]
) -> None:
    with loaded(engine, "swap", adapters["demo-lora-2"]):
        response = load(engine, "swap", adapters["demo-lora-0"], load_inplace=True)
        assert response.status_code == 200
        assert complete(client, "swap") == complete(client, "demo-lora-0")
        assert model_ids(client) == ["demo", *STATIC, "swap"]


def test_max_loras_is_enforced(engine: Server, adapters: dict[str, Path]) -> None:
    with loaded(engine, "third", adapters["demo-lora-2"]):
        refused = load(engine, "fourth", adapters["demo-lora-3"])
        assert refused.status_code == 400
        assert refused.json()["error"]["message"] == (
            "Loading lora fourth failed: max_loras=3 adapters are loaded already "
            "(demo-lora-0, demo-lora-1, third); unload one first."
        )
    with loaded(engine, "fourth", adapters["demo-lora-3"]):  # room again after the unload
        pass


_DIFFERENT_BASE = "(an adapter for a different base model?)"
# kind: (how to make it in a temporary directory, status, reason in the message)
BAD: dict[str, tuple[Callable[[Path], Path], int, str]] = {
    "no-directory": (
        lambda tmp: tmp / "nowhere",
        404,
        "No adapter found for {path} (no such directory)",
    ),
    "no-config": (
        lambda tmp: write_incomplete_adapter(tmp, "adapter_config.json"),
        404,
        "No adapter found for {path} (adapter_config.json is missing)",
    ),
    "no-weights": (
        lambda tmp: write_incomplete_adapter(tmp, "adapter_model.safetensors"),
        404,
        "No adapter found for {path} (adapter_model.safetensors is missing)",
    ),
    "rank-too-high": (
        lambda tmp: write_high_rank_adapter(tmp, 2 * MAX_RANK),
        400,
        "LoRA rank 32 is greater than max_lora_rank 16.",
    ),
    "other-hidden-size": (
        lambda tmp: write_wrong_base_adapter(tmp, "hidden-size"),
        400,
        "shape mismatch for 'model.layers.0.mlp.down_proj': got lora_A [8, 512] and "
        f"lora_B [256, 8], the base layer needs [8, 256] and [128, 8] {_DIFFERENT_BASE}",
    ),
    "other-layers": (
        lambda tmp: write_wrong_base_adapter(tmp, "layers"),
        400,
        f"module 'model.layers.2.mlp.down_proj' is not a linear layer of the base model "
        f"{_DIFFERENT_BASE}",
    ),
}


@pytest.mark.parametrize(("make", "status", "reason"), BAD.values(), ids=BAD.keys())
def test_bad_adapter_is_refused_and_the_server_keeps_serving(
    engine: Server,
    client: openai.OpenAI,
    tmp_path: Path,
    make: Callable[[Path], Path],
    status: int,
    reason: str,
) -> None:
    before = complete(client, "demo-lora-0")
    path = make(tmp_path)
    response = load(engine, "broken", path)
    assert response.status_code == status
    error = response.json()["error"]
    message = "Loading lora broken failed: " + reason.format(path=path)
    assert (error["message"], error["type"], error["param"]) == (
        message,
        "invalid_request_error",
        "lora_path",
    )
    assert model_ids(client) == ["demo", *STATIC]
    assert complete(client, "demo-lora-0") == before


LOAD_BODIES = {
    "no-path": ({"lora_name": "x"}, "`lora_path` is required and must be a string"),
    "empty": ({"lora_name": "", "lora_path": ""}, "Both 'lora_name' and 'lora_path' must be "
              "provided."),
    "base-name": ({"lora_name": "demo", "lora_path": "/x"},
                  "The lora adapter 'demo' conflicts with a served base model."),
}  # fmt: skip


@pytest.mark.parametrize(("body", "message"), LOAD_BODIES.values(), ids=LOAD_BODIES.keys())
def test_bad_load_requests_are_400(engine: Server, body: dict[str, str], message: str) -> None:
    response = httpx.post(engine.url + "/v1/load_lora_adapter", json=body)
    assert (response.status_code, response.json()["error"]["message"]) == (400, message)


async def test_mixed_adapters_share_decode_steps_and_keep_their_outputs(engine: Server) -> None:
    jobs = [
        ("demo", PROMPT),
        ("demo-lora-0", PROMPT),
        ("demo-lora-1", PROMPT),
        ("demo-lora-0", "import os\n"),
        ("demo", "class Queue:"),
    ]
    async with openai.AsyncOpenAI(base_url=engine.url + "/v1", api_key="x") as client:

        async def alone(model: str, prompt: str) -> str:
            reply = await client.completions.create(model=model, prompt=prompt, **LONG)
            return reply.choices[0].text

        solo = [await alone(m, p) for m, p in jobs]
        streams = [
            await client.completions.create(model=m, prompt=p, stream=True, **LONG) for m, p in jobs
        ]
        # All five in the decode batch together: every step mixes both adapters and the base.
        wait_until(lambda: engine_counter(engine.url, RUNNING) == 5, 10, "all five to run")
        info = lora_info(engine)

        async def read(stream: Any) -> str:
            return "".join([c.choices[0].text async for c in stream])

        together = await asyncio.gather(*(read(s) for s in streams))
    assert list(together) == solo
    assert info == {
        "max_lora": "3",
        "running_lora_adapters": "demo-lora-0,demo-lora-1",
        "waiting_lora_adapters": "",
    }


def test_unload_while_generating_keeps_the_request_on_its_weights(
    engine: Server, client: openai.OpenAI, adapters: dict[str, Path]
) -> None:
    long = {**LONG, "max_tokens": 1000}
    assert load(engine, "leaving", adapters["demo-lora-2"]).status_code == 200
    solo = client.completions.create(model="leaving", prompt=PROMPT, **long).choices[0].text
    stream = client.completions.create(model="leaving", prompt=PROMPT, stream=True, **long)
    chunks = iter(stream)
    text = next(chunks).choices[0].text
    assert unload(engine, "leaving").status_code == 200
    # Unloaded, it still runs on its weights (1000 tokens outlast an unload call; they
    # need not outlast a load on a busy machine, so this is checked first).
    assert engine_counter(engine.url, RUNNING) == 1
    assert lora_info(engine)["running_lora_adapters"] == "leaving"
    # While its slot is busy the newcomer must get another one: had it taken that slot,
    # the rest of `leaving`'s text would come from the newcomer's weights (`text == solo`).
    with loaded(engine, "arriving", adapters["demo-lora-3"]):
        arriving = complete(client, "arriving")
        text += "".join(c.choices[0].text for c in chunks)
        assert complete(client, "arriving") == arriving
    assert text == solo


def test_metrics_count_loaded_adapters(engine: Server, adapters: dict[str, Path]) -> None:
    assert engine_counter(engine.url, "llmgw_engine_lora_adapters") == 2
    with loaded(engine, "counted", adapters["demo-lora-2"]):
        assert engine_counter(engine.url, "llmgw_engine_lora_adapters") == 3
    assert lora_info(engine) == {
        "max_lora": "3",
        "running_lora_adapters": "",
        "waiting_lora_adapters": "",
    }


def test_a_bad_lora_module_stops_the_start(tmp_path: Path) -> None:
    path = write_high_rank_adapter(tmp_path / "big", 2 * MAX_RANK)
    argv = _engine_argv(free_port(), "--lora-modules", f"big={path}")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert (
        f"--lora-modules big={path}: Loading lora big failed: LoRA rank 32 is greater than "
        "max_lora_rank 16." in done.stderr
    )


FLAGS = {
    "off": ([], None),
    "enabled": (["--enable-lora"], LoRAOptions(4, 16, ())),
    "modules-imply-it": (
        ["--max-loras", "2", "--lora-modules", "a=/p/a", '{"name": "b", "path": "/p/b"}'],
        LoRAOptions(2, 16, (("a", "/p/a"), ("b", "/p/b"))),
    ),
}


@pytest.mark.parametrize(("flags", "expected"), FLAGS.values(), ids=FLAGS.keys())
def test_lora_flags(flags: list[str], expected: LoRAOptions | None) -> None:
    assert parse_args(["--model", "demo", *flags]).lora == expected


@pytest.mark.parametrize(
    "flags",
    [["--lora-modules", "nameonly"], ["--max-loras", "1", "--lora-modules", "a=/a", "b=/b"]],
    ids=["no-path", "more-than-max"],
)
def test_bad_lora_flags_exit(flags: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--model", "demo", *flags])


@dataclass
class InProcess:
    """The demo model with both static adapters installed in its bank, no server."""

    runner: ModelRunner
    slots: dict[str, int]  # model name -> slot; the base is 0


@pytest.fixture(scope="module")
def in_process(adapters: dict[str, Path]) -> InProcess:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ensure_demo_model())
    bank = AdapterBank(model, max_rank=MAX_RANK, max_loras=2)
    slots = {"demo": 0}
    for name in STATIC:
        path = str(adapters[name])
        weights = read_adapter(
            name, path, max_rank=MAX_RANK, targets=bank.targets, dtype=bank.dtype
        )
        slots[name] = bank.install(weights, busy=())
    return InProcess(ModelRunner(model, bank), slots)


@pytest.mark.parametrize("name", STATIC)
def test_lora_math_equals_peft(in_process: InProcess, adapters: dict[str, Path], name: str) -> None:
    import warnings

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    prompt = [0, 5, 6, 7]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft reads a deprecated attribute
        base = AutoModelForCausalLM.from_pretrained(ensure_demo_model())
        reference = PeftModel.from_pretrained(base, adapters[name])
    with torch.no_grad():
        expected = reference(torch.tensor([prompt])).logits[0, -1]
    got = in_process.runner.prefill(prompt, in_process.slots[name])[0]
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("decoder", [BatchedDecoder, SequentialDecoder], ids=["batched", "seq"])
def test_mixed_rows_equal_single_ones(in_process: InProcess, decoder: type[Decoder]) -> None:
    """One decode step over rows of different adapters equals each row decoded alone."""
    runner, slots = in_process.runner, in_process.slots
    rows = [
        ([0, 5, 6, 7], slots["demo"]),
        ([0, 9], slots[STATIC[0]]),
        ([0, 11, 12], slots[STATIC[1]]),
    ]

    def next_logits(batch: list[tuple[list[int], int]]) -> torch.Tensor:
        """Prefill each row, then one decode step of token 42 on all of them."""
        state = decoder(runner)
        for prompt, slot in batch:
            state.add(runner.prefill(prompt, slot)[1])
        return state.step([42] * len(batch), [len(p) for p, _ in batch], [s for _, s in batch])

    alone = torch.cat([next_logits([row]) for row in rows])
    together = next_logits(rows)
    # Batching itself moves logits by ~1e-7 (padding, kernel blocking), LoRA or not;
    # a row through the wrong adapter would be off by ~0.1.
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(alone[0], next_logits([(rows[0][0], slots[STATIC[0]])])[0])


async def test_without_lora_loads_are_refused(in_process: InProcess) -> None:
    generator = Generator(in_process.runner, None, eos_token_ids=(1,), max_model_len=2048)
    manager = AdapterManager(generator, None, "demo", max_loras=0)
    with pytest.raises(InvalidRequest, match="LoRA is not enabled; start the engine with"):
        await manager.load("a", "/a")
    with pytest.raises(ModelNotFound, match="The model `a` does not exist."):
        manager.resolve("a")
    assert manager.resolve("demo") is None
