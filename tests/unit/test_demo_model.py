"""The demo model: builds offline, deterministically, and loads as a standard Llama."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from pathlib import Path

import pytest

from llmgw.engines.demo_model import DEMO_MODEL_NAME, ensure_demo_model


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return (
        ensure_demo_model(tmp_path_factory.mktemp("a")),
        ensure_demo_model(tmp_path_factory.mktemp("b")),
    )


def test_builds_are_byte_identical(two_builds: tuple[Path, Path]) -> None:
    a, b = two_builds
    names = sorted(p.name for p in a.iterdir())
    assert names == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert {n: _sha256(a / n) for n in names} == {n: _sha256(b / n) for n in names}


def test_second_call_reuses_the_cache(two_builds: tuple[Path, Path]) -> None:
    a, _ = two_builds
    before = (a / "model.safetensors").stat().st_mtime_ns
    assert ensure_demo_model(a.parent) == a
    assert (a / "model.safetensors").stat().st_mtime_ns == before
    assert a.name == DEMO_MODEL_NAME
    lock = f"{DEMO_MODEL_NAME}.lock"
    assert sorted(p.name for p in a.parent.iterdir()) == [DEMO_MODEL_NAME, lock]


def test_config_is_a_standard_llama(two_builds: tuple[Path, Path]) -> None:
    config = json.loads((two_builds[0] / "config.json").read_text())
    picked = {k: config[k] for k in ("architectures", "hidden_size", "head_dim", "vocab_size")}
    assert picked == {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 128,
        "head_dim": 64,
        "vocab_size": 2048,
    }
    generation = json.loads((two_builds[0] / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 0, "eos_token_id": [1, 4]}


def test_chat_template_renders_llama3_layout(two_builds: tuple[Path, Path]) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(two_builds[0])
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids[:2] == [0, 2]  # BOS, start_header: special tokens are single ids
    assert ids.count(4) == 4  # one eot per message
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert (tok.bos_token_id, tok.eos_token_id) == (0, 1)
    assert tok("x").input_ids[0] == tok.bos_token_id  # plain prompts get BOS, like llama-3


def test_loads_with_auto_model_and_generates(two_builds: tuple[Path, Path]) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(two_builds[0])
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.dtype == torch.float32
    out = model.generate(torch.tensor([[0, 5, 6]]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 7)


def _build_in(root: str) -> str:
    return str(ensure_demo_model(Path(root)))


def test_concurrent_builders_agree(tmp_path: Path) -> None:
    """Two processes racing (two replicas starting together) get one valid directory."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        paths = pool.map(_build_in, [str(tmp_path)] * 2)
    assert paths == [str(tmp_path / DEMO_MODEL_NAME)] * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        DEMO_MODEL_NAME,
        f"{DEMO_MODEL_NAME}.lock",
    ]
