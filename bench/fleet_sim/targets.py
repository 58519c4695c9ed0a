"""The processes the fleet benchmark runs: the simulated fleet and the routers in front.

How they are started, waited for and stopped is ``bench/processes.py`` (shared with
``bench/overhead.py``); a router that does not come up raises
:class:`~bench.processes.StartError`, whose message goes into the results table as the
reason for ``n/a``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from bench.processes import REPO, Proc, StartError, free_ports, spawn
from llmgw.routing.registry import PRESETS

MODEL = "sim"


def start_sims(logs: Path, ports: list[int], cost_flags: list[str]) -> Proc:
    argv = [sys.executable, "-m", "bench.fleet_sim.sim_engine", "--model", MODEL,
            "--ports", ",".join(map(str, ports)), *cost_flags]
    return spawn("sims", argv, ports[0], logs)


# ``llmgw/default``: the model has no ``routing:`` key, so it gets what a new user gets.
DEFAULT_POLICY = "default"
B256 = {"block_chars": 256, "max_blocks": 128}
# Policies the bench defines under ``policies:`` (not built in): candidates for the default
# policy, measured side by side with the built-in ones (issue 15).
CANDIDATES: dict[str, dict[str, object]] = {
    # prefix-aware with a guard that trips at a small imbalance (abs 2, rel 1.25).
    "prefix-tight": {"scorers": [{"type": "prefix-cache", "weight": 2},
                                 {"type": "least-load", "weight": 1}],
                     "load_guard": {"abs_threshold": 2, "rel_threshold": 1.25}},
    # Sessions stick with a tighter bound, prefix affinity places a session's first turn
    # (and single requests), the guard trips early.
    "session-prefix-tight": {"scorers": [{"type": "session", "weight": 2,
                                          "params": {"load_factor": 1.25}},
                                         {"type": "prefix-cache", "weight": 2},
                                         {"type": "least-load", "weight": 1}],
                             "load_guard": {"abs_threshold": 2, "rel_threshold": 1.25}},
    # A session stays where its first turn went while under 1.25 x (mean load + 1);
    # prefix affinity and load place that first turn; no guard to move sessions.
    "sticky-prefix": {"scorers": [{"type": "session", "weight": 3, "params": {
                                       "load_factor": 1.25, "placement": "others"}},
                                  {"type": "prefix-cache", "weight": 1},
                                  {"type": "least-load", "weight": 1}],
                      "load_guard": None},
    # session-aware with new sessions placed by the hash order alone (as before sessions
    # were counted): the session count bound never binds.
    "session-hash": {"scorers": [{"type": "session", "weight": 3,
                                  "params": {"session_factor": 100}},
                                 {"type": "prefix-cache", "weight": 1},
                                 {"type": "least-load", "weight": 1}]},
    # The same with the guard at abs 2 / rel 1.25 for the first turns' placement.
    "sticky-prefix-guard": {"scorers": [{"type": "session", "weight": 3, "params": {
                                             "load_factor": 1.25, "placement": "others"}},
                                        {"type": "prefix-cache", "weight": 1},
                                        {"type": "least-load", "weight": 1}],
                            "load_guard": {"abs_threshold": 2, "rel_threshold": 1.25}},
    # prefix-aware and session-aware with 256-character blocks, half the hashing of the
    # default 128 (issue 15, point 6: the routing decision's CPU against its hit rate).
    "prefix-b256": {"scorers": [{"type": "prefix-cache", "weight": 2, "params": B256},
                                {"type": "least-load", "weight": 1}]},
    "session-b256": {"scorers": [{"type": "session", "weight": 3},
                                 {"type": "prefix-cache", "weight": 1, "params": B256},
                                 {"type": "least-load", "weight": 1}]},
}

# The built-in prefix-aware and session-aware with the cache-trust feedback off (issue 15,
# point 5): each replica's affinity keeps its configured weight whatever the engines
# report cached. The "before" of a before/after in one run.
CANDIDATES.update({f"{name}-fixed": {**PRESETS[name].model_dump(), "cache_trust_floor": 1.0}
                   for name in ("prefix-aware", "session-aware")})


def lora_config(adapters: list[str], slots: int) -> dict[str, object]:
    """A model's ``lora:`` for the sims: ``adapters`` (each loadable: the sims accept any
    source) and ``slots`` per replica, the sims' ``--max-loras``; hotness at its default."""
    return {"max_adapters_per_replica": slots,
            "adapters": [{"name": name, "source": f"sim/{name}"} for name in adapters]}


def llmgw_config(policy: str, urls: list[str], workers: int = 1,
                 lora: dict[str, object] | None = None,
                 state_dir: Path | None = None) -> dict[str, object]:
    model: dict[str, object] = {"name": MODEL, "engine": "vllm", "url": urls}
    if policy != DEFAULT_POLICY:
        model["routing"] = policy
    server: dict[str, object] = {"log_level": "warning"}
    if lora is not None:
        model["lora"] = lora
    if state_dir is not None:  # LoRA's adapter state file, kept out of the user's home
        server["state_dir"] = str(state_dir)
    config: dict[str, object] = {"models": [model],
                                 "health": {"interval_s": 1, "stats_interval_s": 0.5},
                                 "server": {**server, "workers": workers}}
    if policy in CANDIDATES:
        config["policies"] = {policy: CANDIDATES[policy]}
    return config


def check_llmgw(config: Path) -> None:
    """``llmgw check``; StartError with its message when it rejects the config (e.g. a
    routing policy this checkout does not have)."""
    done = subprocess.run([sys.executable, "-m", "llmgw", "check", str(config)], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        lines = [ln.strip() for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
        raise StartError("llmgw check: " + " ".join(lines[-2:])[:300])


def start_llmgw(logs: Path, policy: str, urls: list[str], instances: int = 1,
                workers: int = 1, lora: dict[str, object] | None = None) -> list[Proc]:
    """``instances`` gateway processes on one config, each on its own port, each attached
    to every URL: several gateways in front of one fleet, as one per node on a cluster.
    Each keeps its own in-flight counts, prefix index and session table (as does each of
    its ``workers``). The caller stops every process returned, even when waiting for one
    of them fails."""
    config = logs / f"llmgw-{policy}.yaml"
    state_dir = logs if lora is not None else None
    # JSON is YAML.
    config.write_text(json.dumps(llmgw_config(policy, urls, workers, lora, state_dir)))
    check_llmgw(config)
    procs = []
    for i, port in enumerate(free_ports(instances)):
        argv = [sys.executable, "-m", "llmgw", "up", str(config), "--port", str(port)]
        name = f"llmgw-{policy}" if instances == 1 else f"llmgw-{policy}-{instances}x-{i}"
        procs.append(spawn(name, argv, port, logs))
    return procs


# sglang-router variants, by the name after "sglang-router/": the cache_aware policy with
# its own defaults (cache threshold 0.3, balance thresholds abs 64 / rel 1.5), and with
# balance thresholds that can trip at the benchmark's load. Balancing switches a request
# to the least-loaded worker when max - min load > abs and max > rel x min; at 32 requests
# in flight over 8 replicas (4 each on average) the default abs 64 never does.
SGLANG_ROUTER_VARIANTS: dict[str, list[str]] = {
    "cache_aware": ["--policy", "cache_aware"],
    "cache_aware-abs4-rel1.5": ["--policy", "cache_aware", "--balance-abs-threshold", "4",
                                "--balance-rel-threshold", "1.5"],
}


def start_sglang_router(logs: Path, variant: str, urls: list[str]) -> Proc:
    """The Rust router from the ``sglang-router`` wheel, as :data:`SGLANG_ROUTER_VARIANTS`
    configures it."""
    if variant not in SGLANG_ROUTER_VARIANTS:
        raise StartError(f"unknown sglang-router variant {variant!r}; known: "
                         + ", ".join(SGLANG_ROUTER_VARIANTS))
    if importlib.util.find_spec("sglang_router") is None:
        raise StartError("sglang-router is not installed (pip install sglang-router)")
    port, metrics_port = free_ports(2)
    argv = [sys.executable, "-m", "sglang_router.launch_router", "--worker-urls", *urls,
            *SGLANG_ROUTER_VARIANTS[variant], "--host", "127.0.0.1", "--port", str(port),
            "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics_port),
            "--log-level", "warn"]
    return spawn(f"sglang-router-{variant}", argv, port, logs)
