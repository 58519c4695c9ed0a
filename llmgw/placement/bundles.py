"""What one replica asks a Ray cluster for, and how its engine processes find each other.

Pure functions of a launch unit (``commands.launch_unit``), shared by the Ray launcher
and ``llmgw check``: a replica is one placement group with one bundle per engine process
(one per node it spans); rank 0 serves HTTP, the other ranks join it through the
engine's own multi-node flags. No nested placement groups: engines run their own
multiprocessing executor inside the bundle's GPUs (Ray's executor inside an outer
group cannot be placed, ray-project/ray#59064).
"""

from __future__ import annotations

from llmgw.config import ModelConfig, ProcessResources

# Engines whose GPUs default to tensor x pipeline parallelism; the others run on CPUs.
_GPU_ENGINES = ("vllm", "sglang")
# A custom resource every node of that accelerator carries (Ray's accelerator_type).
_ACCELERATOR_AMOUNT = 0.001


def replica_gpus(unit: ModelConfig) -> float:
    """GPUs per replica, over all its nodes."""
    if unit.placement.gpus is not None:
        return unit.placement.gpus
    if unit.engine not in _GPU_ENGINES:
        return 0.0
    launch = unit.launch
    return float((launch.tensor_parallel_size or 1) * (launch.pipeline_parallel_size or 1))


def replica_bundles(unit: ModelConfig) -> list[dict[str, float]]:
    """One bundle per engine process: ``[{"CPU": 1, "GPU": 2}]`` for a TP=2 replica."""
    placement = unit.placement
    bundle = process_bundle(placement, replica_gpus(unit) / placement.nodes)
    return [dict(bundle) for _ in range(placement.nodes)]


def process_bundle(resources: ProcessResources, gpus: float) -> dict[str, float]:
    """The bundle one process asks for (an engine's, a tool worker's): its CPUs, ``gpus``
    when any, its accelerator and its custom resources."""
    bundle: dict[str, float] = {"CPU": resources.cpus}
    if gpus:
        bundle["GPU"] = gpus
    if resources.accelerator_type is not None:
        bundle[f"accelerator_type:{resources.accelerator_type}"] = _ACCELERATOR_AMOUNT
    bundle.update(resources.resources)
    return bundle


def rank_command(argv: list[str], engine: str, rank: int, nodes: int, master_addr: str,
                 master_port: int) -> list[str]:
    """``argv`` (the single-node command, ``commands.engine_command``) as rank ``rank``
    of a replica over ``nodes`` nodes whose rank 0 runs on ``master_addr``. Rank 0 serves
    the OpenAI API; vLLM's other ranks run ``vllm serve --headless`` (the API server
    module has no headless mode), SGLang's run the same server, which serves nothing on
    ranks above 0."""
    if nodes == 1:
        return argv
    if engine == "sglang":
        return [*argv, "--nnodes", str(nodes), "--node-rank", str(rank),
                "--dist-init-addr", f"{master_addr}:{master_port}"]
    flags = ["--nnodes", str(nodes), "--node-rank", str(rank), "--master-addr", master_addr,
             "--master-port", str(master_port)]
    if rank == 0:
        return [*argv, *flags]
    if engine == "vllm":
        module = argv.index("-m")
        argv = [*argv[:module], "-m", "vllm.entrypoints.cli.main", "serve",
                *argv[module + 2:]]
    return [*argv, *flags, "--headless"]
