"""`check_lora`: what `llmgw check` (and `up`, before launching anything) refuses about the
LoRA side of a config: demo adapters it cannot build, an adapter state file it cannot
read or keep."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmgw.config import AdapterConfig, ConfigError, GatewayConfig
from llmgw.lora.setup import check_lora, make_catalog


def config(state_dir: Path, adapters: list[AdapterConfig] | None = None,
           lora: bool = True) -> GatewayConfig:
    model: dict[str, Any] = {"name": "demo", "engine": "transformers", "model": "demo",
                             "replicas": 1}
    if lora:
        model["lora"] = {}
    other = {"name": "remote", "engine": "vllm", "url": "http://127.0.0.1:9"}
    cfg = GatewayConfig.model_validate({"server": {"state_dir": str(state_dir)},
                                        "models": [other, model]})
    if not adapters:
        return cfg
    # As a config built without validation would carry them: check_lora must not rely
    # on the schema having refused a bad demo name.
    demo = cfg.models[1]
    assert demo.lora is not None
    demo = demo.model_copy(update={"lora": demo.lora.model_copy(update={"adapters": adapters})})
    return cfg.model_copy(update={"models": [cfg.models[0], demo]})


def unchecked(name: str) -> AdapterConfig:
    return AdapterConfig.model_construct(name=name, source="demo")


DEMO_NAMES = [
    ("not-numbered", "my-adapter"),
    ("too-many", "demo-lora-100000"),
    ("just-over", "demo-lora-64"),
    ("leading-zero", "demo-lora-07"),
]


@pytest.mark.parametrize("name", [n for _, n in DEMO_NAMES], ids=[i for i, _ in DEMO_NAMES])
def test_demo_adapters_need_a_bounded_demo_name(tmp_path: Path, name: str) -> None:
    cfg = config(tmp_path, [AdapterConfig(name="demo-lora-63", source="demo"), unchecked(name)])
    message = (f"models[1].lora.adapters[1]: source 'demo' needs a name demo-lora-N with N "
               f"in 0..63 (the demo adapters up to N are built at start), got {name!r}")
    with pytest.raises(ConfigError) as info:
        check_lora(cfg)
    assert str(info.value) == message
    with pytest.raises(ConfigError) as info:  # `up` without the check: the same, no traceback
        make_catalog(cfg)
    assert str(info.value) == message


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


BAD_STATE_DIRS = [
    ("a-file", lambda tmp: write(tmp / "state", ""), "is not a directory"),
    ("under-a-file", lambda tmp: write(tmp / "file", "") / "state",
     "cannot be created: " + "{tmp}/file is not a directory"),
    ("state-file-is-a-dir", lambda tmp: (tmp / "state" / "adapters.json").mkdir(parents=True)
     or tmp / "state", "{tmp}/state/adapters.json is not a regular file"),
    ("not-json", lambda tmp: write(tmp / "state" / "adapters.json", "{").parent,
     "{tmp}/state/adapters.json is not JSON"),
    ("a-list", lambda tmp: write(tmp / "state" / "adapters.json", "[]").parent,
     "{tmp}/state/adapters.json: the top level must be an object"),
    ("entry-shape", lambda tmp: write(tmp / "state" / "adapters.json",
                                      json.dumps({"registered": {"x": "s"}})).parent,
     "{tmp}/state/adapters.json: registered.x must be an object"),
]


@pytest.mark.parametrize(("make", "words"), [b[1:] for b in BAD_STATE_DIRS],
                         ids=[b[0] for b in BAD_STATE_DIRS])
def test_the_adapter_state_must_be_readable_and_writable(tmp_path: Path, make: Any,
                                                         words: str) -> None:
    state_dir = make(tmp_path)
    with pytest.raises(ConfigError, match="^server.state_dir: ") as info:
        check_lora(config(state_dir))
    assert words.format(tmp=tmp_path) in str(info.value)
    check_lora(config(state_dir, lora=False))  # no model with lora: the state is unused


def test_a_good_state_passes_and_nothing_is_created(tmp_path: Path) -> None:
    check_lora(config(tmp_path / "new" / "state"))
    assert not (tmp_path / "new").exists()
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    write(tmp_path / "state" / "adapters.json", json.dumps(
        {"registered": {"a": {"base": "demo", "source": str(root / "a")}}, "removed": []}))
    check_lora(config(tmp_path / "state"))
