"""Demo LoRA adapters: offline, deterministic, non-zero, standard PEFT, plus bad ones."""

from __future__ import annotations

import hashlib
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmgw.engines.demo_lora import (
    ADAPTER_FILES,
    DEMO_LORA_DIR,
    build_demo_adapters,
    write_high_rank_adapter,
    write_incomplete_adapter,
    write_wrong_base_adapter,
)
from llmgw.engines.demo_model import DEMO_MODEL_NAME, ensure_demo_model

NAMES = ["demo-lora-0", "demo-lora-1", "demo-lora-2"]
PREFIX = "base_model.model.model.layers"


def _tensors(adapter: Path) -> dict[str, torch.Tensor]:
    return load_file(str(adapter / "adapter_model.safetensors"))


def _digests(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def adapters(cache: Path) -> dict[str, Path]:
    return build_demo_adapters(3, cache_dir=cache)


def test_names_layout_and_config(cache: Path, adapters: dict[str, Path]) -> None:
    assert list(adapters) == NAMES
    assert adapters["demo-lora-1"] == cache / DEMO_LORA_DIR / "r8" / "demo-lora-1"
    assert sorted(p.name for p in adapters["demo-lora-0"].iterdir()) == sorted(ADAPTER_FILES)
    config = json.loads((adapters["demo-lora-0"] / "adapter_config.json").read_text())
    picked = {k: config[k] for k in ("peft_type", "r", "lora_alpha", "target_modules", "bias")}
    assert picked == {
        "peft_type": "LORA",
        "r": 8,
        "lora_alpha": 16,
        "target_modules": ["down_proj", "k_proj", "o_proj", "q_proj", "v_proj"],
        "bias": "none",
    }
    assert config["base_model_name_or_path"] == str(cache / DEMO_MODEL_NAME)


def test_weights_are_nonzero_distinct_and_peft_shaped(adapters: dict[str, Path]) -> None:
    tensors = {n: _tensors(p) for n, p in adapters.items()}
    first = tensors["demo-lora-0"]
    shapes = {k: list(t.shape) for k, t in first.items() if ".layers.0." in k}
    assert shapes == {
        f"{PREFIX}.0.self_attn.q_proj.lora_A.weight": [8, 128],
        f"{PREFIX}.0.self_attn.q_proj.lora_B.weight": [128, 8],
        f"{PREFIX}.0.self_attn.k_proj.lora_A.weight": [8, 128],
        f"{PREFIX}.0.self_attn.k_proj.lora_B.weight": [64, 8],
        f"{PREFIX}.0.self_attn.v_proj.lora_A.weight": [8, 128],
        f"{PREFIX}.0.self_attn.v_proj.lora_B.weight": [64, 8],
        f"{PREFIX}.0.self_attn.o_proj.lora_A.weight": [8, 128],
        f"{PREFIX}.0.self_attn.o_proj.lora_B.weight": [128, 8],
        f"{PREFIX}.0.mlp.down_proj.lora_A.weight": [8, 256],
        f"{PREFIX}.0.mlp.down_proj.lora_B.weight": [128, 8],
    }
    assert len(first) == 2 * len(shapes)  # both layers
    assert all(t.abs().min() > 0 for t in first.values())  # lora_B too, unlike a fresh PEFT init
    key = f"{PREFIX}.1.mlp.down_proj.lora_B.weight"
    assert not torch.equal(tensors["demo-lora-0"][key], tensors["demo-lora-1"][key])


def test_rebuild_is_byte_identical_and_the_cache_is_reused(
    cache: Path, adapters: dict[str, Path]
) -> None:
    path = adapters["demo-lora-2"]
    before = _digests(path)
    mtime = (path / "adapter_model.safetensors").stat().st_mtime_ns
    assert build_demo_adapters(3, cache_dir=cache) == adapters
    assert (path / "adapter_model.safetensors").stat().st_mtime_ns == mtime
    shutil.rmtree(path)
    assert build_demo_adapters(3, cache_dir=cache) == adapters
    assert _digests(path) == before
    assert sorted(p.name for p in (cache / DEMO_LORA_DIR / "r8").iterdir()) == NAMES


def test_weights_do_not_depend_on_the_cache_dir(tmp_path: Path, adapters: dict[str, Path]) -> None:
    other = build_demo_adapters(1, cache_dir=tmp_path)["demo-lora-0"]
    name = "adapter_model.safetensors"
    assert _digests(other)[name] == _digests(adapters["demo-lora-0"])[name]


def test_rank_is_a_parameter(cache: Path) -> None:
    path = build_demo_adapters(1, rank=4, cache_dir=cache)["demo-lora-0"]
    assert path.parent.name == "r4"
    assert json.loads((path / "adapter_config.json").read_text())["r"] == 4
    a = _tensors(path)[f"{PREFIX}.0.self_attn.q_proj.lora_A.weight"]
    assert list(a.shape) == [4, 128]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # peft reads a deprecated transformers attr
def test_peft_loads_them_and_each_changes_the_output(
    cache: Path, adapters: dict[str, Path]
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_dir = ensure_demo_model(cache)
    ids = torch.tensor([[0, 100, 200, 300, 400]])

    def greedy(model: torch.nn.Module) -> list[int]:
        out = model.generate(input_ids=ids, max_new_tokens=12, min_new_tokens=12, do_sample=False)
        return [int(t) for t in out[0, ids.shape[1] :]]

    outputs = [greedy(AutoModelForCausalLM.from_pretrained(base_dir))]
    for path in adapters.values():
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), path)
        outputs.append(greedy(model))
    assert len({tuple(o) for o in outputs}) == 4  # base and three adapters all differ


def test_bad_adapters(tmp_path: Path, cache: Path) -> None:
    high = write_high_rank_adapter(tmp_path / "high", 64, cache_dir=cache)
    assert json.loads((high / "adapter_config.json").read_text())["r"] == 64
    wide = _tensors(write_wrong_base_adapter(tmp_path / "wide", "hidden-size", cache))
    assert list(wide[f"{PREFIX}.0.self_attn.q_proj.lora_A.weight"].shape) == [8, 256]
    deep = _tensors(write_wrong_base_adapter(tmp_path / "deep", "layers", cache))
    assert {k.split(".")[4] for k in deep} == {"0", "1", "2", "3"}  # the demo model has 2
    for missing in ADAPTER_FILES:
        path = write_incomplete_adapter(tmp_path / missing, missing, cache_dir=cache)
        assert [p.name for p in path.iterdir()] == [f for f in ADAPTER_FILES if f != missing]


def test_concurrent_builders_agree(tmp_path: Path) -> None:
    """Two builders racing (replicas starting together) get the same complete directories.
    Threads are enough: each `open` gets its own flock, as separate processes would."""
    ensure_demo_model(tmp_path)  # only the adapters race
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: build_demo_adapters(2, cache_dir=tmp_path), range(2)))
    assert results[0] == results[1]
    assert sorted(p.name for p in (tmp_path / DEMO_LORA_DIR / "r8").iterdir()) == NAMES[:2]
    assert [sorted(p.name for p in d.iterdir()) for d in results[0].values()] == [
        sorted(ADAPTER_FILES)
    ] * 2
