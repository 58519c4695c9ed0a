"""What a replica asks a Ray cluster for, and the command each of its engine processes
runs (pure functions of the model config)."""

from __future__ import annotations

from typing import Any

import pytest

from llmgw.config import ModelConfig
from llmgw.placement.bundles import rank_command, replica_bundles, replica_gpus
from llmgw.placement.commands import engine_command


def model(**fields: Any) -> ModelConfig:
    return ModelConfig.model_validate({"name": "m", "model": "org/m", **fields})


@pytest.mark.parametrize(("fields", "gpus"), [
    ({"engine": "vllm"}, 1.0),
    ({"engine": "vllm", "launch": {"tensor_parallel_size": 4, "pipeline_parallel_size": 2}}, 8.0),
    ({"engine": "sglang", "launch": {"tensor_parallel_size": 2}}, 2.0),
    ({"engine": "transformers"}, 0.0),
    ({"engine": "vllm", "placement": {"gpus": 0}}, 0.0),  # vLLM's CPU build
    ({"engine": "vllm", "placement": {"gpus": 0.25}}, 0.25),  # a share of one GPU
])
def test_gpus_default_to_the_parallelism_of_gpu_engines(fields: dict[str, Any],
                                                        gpus: float) -> None:
    assert replica_gpus(model(**fields)) == gpus


def test_one_bundle_per_node_with_the_gpus_split_and_the_extras_on_each() -> None:
    unit = model(engine="vllm", launch={"tensor_parallel_size": 8, "pipeline_parallel_size": 2},
                 placement={"nodes": 2, "cpus": 8, "accelerator_type": "H100",
                            "resources": {"fast_disk": 1}})
    bundle = {"CPU": 8.0, "GPU": 8.0, "accelerator_type:H100": 0.001, "fast_disk": 1.0}
    assert replica_bundles(unit) == [bundle, bundle]
    assert unit.placement.bundle_strategy == "STRICT_SPREAD"
    assert model(engine="vllm").placement.bundle_strategy == "STRICT_PACK"


def test_a_cpu_engine_asks_for_cpus_only() -> None:
    assert replica_bundles(model(engine="transformers", placement={"cpus": 2})) == [
        {"CPU": 2.0}]


@pytest.mark.parametrize(("placement", "error"), [
    ({"gpus": 3, "nodes": 2}, "split evenly"),
    ({"resources": {"GPU": 1}}, "has its own key"),
    ({"resources": {"x": 0}}, "positive"),
])
def test_placement_that_cannot_be_met_is_refused(placement: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        model(engine="vllm", placement=placement)


def test_several_nodes_need_an_engine_that_runs_across_nodes() -> None:
    with pytest.raises(ValueError, match="runs on one node"):
        model(engine="transformers", placement={"nodes": 2})


def test_ranks_join_rank_zero_with_each_engine_s_own_flags() -> None:
    vllm = engine_command(model(engine="vllm"), "10.0.0.1", 8000, "org/m")
    assert rank_command(vllm, "vllm", 0, 1, "10.0.0.1", 0) == vllm
    first = rank_command(vllm, "vllm", 0, 2, "10.0.0.1", 29500)
    assert first[:3] == vllm[:3] and first[-8:] == [
        "--nnodes", "2", "--node-rank", "0", "--master-addr", "10.0.0.1",
        "--master-port", "29500"]
    second = rank_command(vllm, "vllm", 1, 2, "10.0.0.1", 29500)
    # The API server module has no headless mode: `vllm serve --headless` does.
    assert second[1:4] == ["-m", "vllm.entrypoints.cli.main", "serve"]
    assert second[-1] == "--headless" and "--node-rank" in second
    sglang = engine_command(model(engine="sglang"), "10.0.0.2", 8000, "org/m")
    assert rank_command(sglang, "sglang", 1, 2, "10.0.0.1", 5000)[-6:] == [
        "--nnodes", "2", "--node-rank", "1", "--dist-init-addr", "10.0.0.1:5000"]
