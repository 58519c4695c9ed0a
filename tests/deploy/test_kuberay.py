"""deploy/kuberay: the manifests hold together without a Kubernetes cluster. The config in
the ConfigMap passes `llmgw check`, the head pod runs the Ray head and then `llmgw up` on
the file the ConfigMap is mounted as, the gateway's port is the same in the config, the
container and the Service, and every replica fits one GPU worker pod. The head pod's
start script is run for real, with stand-ins for `ray` and `llmgw`: it does not block on
`ray start --block`, restarts a gateway that exits, holds it on request, drains it on
SIGTERM and ends with the Ray head."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmgw.config import GatewayConfig, load_config
from llmgw.placement.bundles import replica_bundles, replica_gpus
from llmgw.placement.commands import launch_unit
from tests.support import ROOT, check_like_llmgw, wait_until

KUBERAY = ROOT / "deploy" / "kuberay"
GPU = "nvidia.com/gpu"


def documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return docs


def one(kind: str) -> dict[str, Any]:
    [doc] = [doc for doc in documents() if doc["kind"] == kind]
    return doc


def head_container() -> dict[str, Any]:
    spec = one("RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]
    return spec["containers"][0]  # type: ignore[no-any-return]


def worker_group() -> dict[str, Any]:
    [group] = one("RayCluster")["spec"]["workerGroupSpecs"]
    return group  # type: ignore[no-any-return]


@pytest.fixture
def gateway_config(tmp_path: Path) -> GatewayConfig:
    """The ConfigMap's ray.yaml, through what `llmgw check` runs."""
    path = tmp_path / "ray.yaml"
    path.write_text(one("ConfigMap")["data"]["ray.yaml"])
    check_like_llmgw([path])
    return load_config([path])


def test_every_document_parses_and_names_its_kind() -> None:
    kinds = sorted((doc["apiVersion"], doc["kind"]) for doc in documents())
    assert kinds == [("ray.io/v1", "RayCluster"), ("v1", "ConfigMap"), ("v1", "Service")]
    assert all(doc["metadata"]["name"] for doc in documents())


def test_the_configmap_is_a_ray_config_with_a_tp2_vllm_model_that_autoscales(
        gateway_config: GatewayConfig) -> None:
    assert gateway_config.placement.backend == "ray"
    assert gateway_config.placement.address == "auto"
    [model] = gateway_config.models
    assert model.engine == "vllm" and model.launch.tensor_parallel_size == 2
    assert model.placement.gpus is None and replica_gpus(model) == 2.0  # derived
    assert model.autoscaling is not None
    assert (model.autoscaling.min_replicas, model.autoscaling.max_replicas) == (1, 4)


def test_the_head_runs_the_ray_head_without_engines_then_llmgw_up_on_the_mounted_file(
) -> None:
    cluster = one("RayCluster")
    assert cluster["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    params = cluster["spec"]["headGroupSpec"]["rayStartParams"]
    assert (params["num-cpus"], params["num-gpus"]) == ("0", "0")
    container = head_container()
    [script] = container["args"]
    assert 'eval "$KUBERAY_GEN_RAY_START_CMD" &' in script  # backgrounded, --block kept
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "config"]
    volumes = cluster["spec"]["headGroupSpec"]["template"]["spec"]["volumes"]
    [volume] = [v for v in volumes if v["name"] == "config"]
    configmap = one("ConfigMap")
    # The whole ConfigMap as a directory (no subPath, no items): each key is a file.
    assert volume["configMap"] == {"name": configmap["metadata"]["name"]}
    assert "subPath" not in mount
    assert f"llmgw up {mount['mountPath']}/ray.yaml" in script
    assert "ray.yaml" in configmap["data"]
    env = {e["name"] for e in container["env"]}
    assert {"RAY_health_check_period_ms", "RAY_health_check_failure_threshold"} <= env


def test_the_gateway_port_is_the_same_in_config_container_and_service(
        gateway_config: GatewayConfig) -> None:
    assert gateway_config.server.host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in head_container()["ports"]}
    service = one("Service")
    [port] = service["spec"]["ports"]
    target = port["targetPort"]
    assert (ports[target] if isinstance(target, str) else target) \
        == gateway_config.server.port
    assert ports["gateway"] == gateway_config.server.port
    cluster = one("RayCluster")["metadata"]["name"]
    assert service["spec"]["selector"] == {"ray.io/cluster": cluster,
                                           "ray.io/node-type": "head"}


def test_gpu_workers_scale_from_zero_and_hold_every_replica_the_config_asks_for(
        gateway_config: GatewayConfig) -> None:
    cluster = one("RayCluster")["spec"]
    assert cluster["enableInTreeAutoscaling"] is True
    group = worker_group()
    assert group["minReplicas"] == 0
    [container] = group["template"]["spec"]["containers"]
    limits = container["resources"]["limits"]
    assert int(limits[GPU]) > 0 and container["resources"]["requests"][GPU] == limits[GPU]
    # The cluster-wide annotation: workers run KubeRay's start command themselves.
    assert '"$KUBERAY_GEN_RAY_START_CMD"' in container["args"][0]
    assert container["image"] == head_container()["image"]
    pod = {"GPU": float(limits[GPU]), "CPU": float(limits["cpu"])}
    for model in gateway_config.models:
        assert model.autoscaling is not None
        [bundle] = replica_bundles(launch_unit(model, "mixed", 0))  # one node per replica
        # A bundle larger than a pod is a placement group no new pod can ever satisfy.
        assert all(bundle[k] <= pod[k] for k in pod if k in bundle), (bundle, pod)
        per_pod = min(pod[k] // bundle[k] for k in pod if bundle.get(k))
        assert group["maxReplicas"] * per_pod >= model.autoscaling.max_replicas


def test_ray_version_is_the_images() -> None:
    dockerfile = (KUBERAY / "Dockerfile").read_text()
    [default] = [line.split("=", 1)[1] for line in dockerfile.splitlines()
                 if line.startswith("ARG RAY_VERSION=")]
    assert one("RayCluster")["spec"]["rayVersion"] == default
    assert "FROM rayproject/ray:${RAY_VERSION}-" in dockerfile


# --- the head pod's start script, run with stand-ins ----------------------------------

RAY_STUB = """#!/bin/sh
# `ray start ... --block` stays in the foreground, as the real one does.
case "$1" in
  start) echo "ray start $#" >> "$STUB_LOG"
         if [ -n "$RAY_DIES_WHEN_SERVING" ]; then  # once a gateway serves (30 s at most)
           for _ in $(seq 600); do grep -q '^serving' "$STUB_LOG" && exit 1; sleep 0.05; done
           exit 1
         fi
         exec sleep 60 ;;
  health-check) exit 0 ;;
esac
"""
LLMGW_STUB = """#!/bin/sh
echo "up $*" >> "$STUB_LOG"
# The first gateway crashes at once; later ones serve until SIGTERM.
if [ "$(grep -c '^up ' "$STUB_LOG")" -eq 1 ]; then exit 3; fi
trap 'echo term >> "$STUB_LOG"; exit 0' TERM
echo serving >> "$STUB_LOG"  # from here a SIGTERM is drained (before the trap, it kills)
sleep 60 & wait $!
"""


@pytest.fixture
def head_script(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("ray", RAY_STUB), ("llmgw", LLMGW_STUB)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "log"
    log.touch()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_LOG": str(log),
           "GATEWAY_PID_FILE": str(tmp_path / "pid"),
           "GATEWAY_HOLD_FILE": str(tmp_path / "hold"),
           # Quoted JSON, as KubeRay writes custom resources: one argument after eval.
           "KUBERAY_GEN_RAY_START_CMD":
               """ray start --head --block --num-cpus=0 --resources='{"x": 1}'"""}
    yield log, env


def run_head(env: dict[str, str]) -> subprocess.Popen[bytes]:
    # `bash -c` rather than the manifest's login shell: a login profile may reset PATH.
    [script] = head_container()["args"]
    return subprocess.Popen(["/bin/bash", "-c", script], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines()


def test_the_head_script_holds_restarts_and_drains_the_gateway(
        head_script: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    log, env = head_script
    (tmp_path / "hold").touch()
    head = run_head(env)
    try:
        wait_until(lambda: "ray start 5" in lines(log), 10, "the Ray head to start")
        assert not any(line.startswith("up ") for line in lines(log))  # held
        (tmp_path / "hold").unlink()
        pid_file = tmp_path / "pid"

        def serving() -> bool:  # the stub trapped SIGTERM; the script knows its pid
            pid = pid_file.read_text().strip() if pid_file.exists() else ""
            return "serving" in lines(log) and pid.isdigit() and _alive(int(pid))

        wait_until(serving, 20, "the crashed gateway to be started again and serve")
        assert lines(log)[1:] == ["up up /etc/llmgw/ray.yaml"] * 2 + ["serving"]
        head.send_signal(signal.SIGTERM)
        assert head.wait(20) == 0
        assert lines(log)[-1] == "term"  # drained, not killed
    finally:
        _stop_group(head)


def test_the_head_script_ends_with_the_ray_head(head_script: tuple[Path, dict[str, str]]
                                                ) -> None:
    log, env = head_script
    log.write_text("up (an earlier gateway)\n")  # this one serves, no crash first
    head = run_head({**env, "RAY_DIES_WHEN_SERVING": "1"})
    try:
        assert head.wait(30) == 1
        assert "up up /etc/llmgw/ray.yaml" in lines(log)
        assert lines(log)[-1] == "term"
    finally:
        _stop_group(head)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """The script and what it left (a backgrounded `ray start` outlives a script that
    exits; in a pod, the container's end takes it)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)
