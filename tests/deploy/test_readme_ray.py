"""README's "Ray: from a laptop to a cluster" says what the code does: its YAML is
configs/ray.yaml's placement, its table lists every key of a model's `placement:` with
the defaults the config has, and its examples of bundles are what a replica asks for."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from llmgw.config import GatewayConfig, ModelConfig, load_config
from llmgw.config.placement import ReplicaPlacementConfig
from llmgw.placement.bundles import replica_bundles
from tests.support import ROOT


def section() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("## Ray: from a laptop to a cluster", 1)[1].split("\n## ", 1)[0]


def placement_table() -> dict[str, str]:
    """key -> the default column of the section's table."""
    rows = [line.split(" | ") for line in section().splitlines()
            if line.startswith("| `")]
    return {row[0].strip("| `"): row[1] for row in rows}


def test_the_yaml_shown_is_configs_ray_yaml() -> None:
    block = section().split("```yaml\n", 1)[1].split("```", 1)[0]
    shown = GatewayConfig.model_validate(yaml.safe_load(block))
    config = load_config([ROOT / "configs" / "ray.yaml"])
    assert shown.placement == config.placement

    def placed(models: list[ModelConfig]) -> list[tuple[Any, ...]]:
        return [(m.name, m.engine, m.model, m.replicas, m.placement) for m in models]

    assert placed(shown.models) == placed(config.models)


def test_the_table_has_every_placement_key_and_its_default() -> None:
    table = placement_table()
    assert sorted(table) == sorted(ReplicaPlacementConfig.model_fields)
    default = ReplicaPlacementConfig()
    assert (table["cpus"], default.cpus) == ("1", 1.0)
    assert (table["nodes"], default.nodes) == ("1", 1)
    assert (table["resources"], default.resources) == ("`{}`", {})
    assert (table["accelerator_type"], default.accelerator_type) == ("none", None)


def model(**fields: Any) -> ModelConfig:
    return ModelConfig.model_validate({"name": "m", "model": "m", "replicas": 1, **fields})


@pytest.mark.parametrize(("fields", "bundles", "strategy"), [
    ({"engine": "vllm", "launch": {"tensor_parallel_size": 2}},
     [{"CPU": 1.0, "GPU": 2.0}], "STRICT_PACK"),
    ({"engine": "sglang", "launch": {"tensor_parallel_size": 2,
                                     "pipeline_parallel_size": 2}},
     [{"CPU": 1.0, "GPU": 4.0}], "STRICT_PACK"),
    ({"engine": "vllm", "placement": {"gpus": 0}}, [{"CPU": 1.0}], "STRICT_PACK"),
    ({"engine": "transformers"}, [{"CPU": 1.0}], "STRICT_PACK"),
    ({"engine": "vllm", "placement": {"gpus": 0.5}}, [{"CPU": 1.0, "GPU": 0.5}],
     "STRICT_PACK"),
    ({"engine": "vllm", "launch": {"tensor_parallel_size": 8}, "placement": {"nodes": 2}},
     [{"CPU": 1.0, "GPU": 4.0}] * 2, "STRICT_SPREAD"),
    ({"engine": "vllm", "placement": {"accelerator_type": "H100", "resources": {"disk": 1}}},
     [{"CPU": 1.0, "GPU": 1.0, "accelerator_type:H100": 0.001, "disk": 1.0}], "STRICT_PACK"),
], ids=["vllm-tp2", "sglang-tp2-pp2", "vllm-cpu", "embedded", "gpu-share", "two-nodes",
        "accelerator-and-custom"])
def test_what_a_replica_asks_for(fields: dict[str, Any], bundles: list[dict[str, float]],
                                 strategy: str) -> None:
    unit = model(**fields)
    assert (replica_bundles(unit), unit.placement.bundle_strategy) == (bundles, strategy)
