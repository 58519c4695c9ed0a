"""The processes ``bench/overhead.py`` measures: the instant engine and the proxies in
front of it, and which CPU each one runs on.

Starting, readiness and CPU accounting are ``bench/processes.py``, shared with
``bench/fleet_sim``. A :class:`~processes.Proc` here is charged the CPU one request costs:
the proxy for a proxy, the engine for the direct row.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from processes import Proc, StartError, free_ports, spawn

BENCH = Path(__file__).resolve().parent
MODEL = "fake"


@dataclass(frozen=True)
class Layout:
    """Which CPU each party runs on; None leaves it to the scheduler. With 2 CPUs the
    client and the engine share the first and the proxy under test has the second, so a
    proxy is never preempted by the load it serves (and a multi-threaded proxy gets one
    core, like the single-threaded Python ones)."""

    client: int | None = None
    engine: int | None = None
    proxy: int | None = None

    @classmethod
    def pinned(cls) -> Layout:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2 or shutil.which("taskset") is None:
            return cls()
        if len(cpus) == 2:
            return cls(cpus[0], cpus[0], cpus[1])
        return cls(cpus[0], cpus[1], cpus[2])

    def describe(self) -> str:
        if self.proxy is None:
            return "not pinned"
        return (f"client on CPU {self.client}, engine on CPU {self.engine}, "
                f"proxy on CPU {self.proxy}")


# --- the four kinds -------------------------------------------------------------------


def start_engine(logs: Path, token_delay_ms: float, cpu: int | None) -> Proc:
    port = free_ports(1)[0]
    argv = [sys.executable, str(BENCH / "instant_engine.py"), "--port", str(port),
            "--served-model-name", MODEL, "--token-delay-ms", str(token_delay_ms)]
    return spawn("direct", argv, port, logs, cpu)


def llmgw_config(engine_url: str, port: int, tracing: bool = False, workers: int = 1,
                 routing: str = "least-load") -> str:
    config = (f"server: {{host: 127.0.0.1, port: {port}, log_level: warning, "
              f"workers: {workers}}}\n"
              f"models:\n  - name: {MODEL}\n    engine: openai\n"
              f"    url: [\"{engine_url}\"]\n    routing: {routing}\n")
    if tracing:  # every request traced, spans exported to the instant engine's OTLP sink
        config += (f"telemetry:\n  tracing: {{endpoint: \"{engine_url}/v1/traces\", "
                   f"sample_ratio: 1.0}}\n")
    return config


def start_llmgw(logs: Path, engine_url: str, cpu: int | None, probe: bool = False,
                freeze: bool = False, name: str = "llmgw", tracing: bool = False,
                tree: Path | None = None, workers: int = 1,
                routing: str = "least-load") -> Proc:
    """``llmgw up`` on a temporary config; through bench/gc_probe.py (stats in
    ``logs/<name>-gc.json``) when ``probe`` or ``freeze``. ``tracing``: with
    ``telemetry.tracing`` on. ``tree``: the llmgw of another checkout (e.g. a worktree of
    main), to measure a change against it in the same alternating rounds. ``workers``:
    ``server.workers`` (the CPU counted is the supervisor's and every worker's).
    ``routing``: the model's policy (``prefix-aware`` is what a config without one gets)."""
    port = free_ports(1)[0]
    config = logs / f"{name}.yaml"
    config.write_text(llmgw_config(engine_url, port, tracing, workers, routing))
    entry = ["-m", "llmgw"]
    if tree is not None:
        entry = ["-c", f"import runpy, sys; sys.path.insert(0, {str(tree)!r}); "
                       f"runpy.run_module('llmgw', run_name='__main__', alter_sys=True)"]
    if probe or freeze:
        entry = [str(BENCH / "gc_probe.py"), *(["--freeze"] if freeze else []),
                 str(logs / f"{name}-gc.json")]
    argv = [sys.executable, *entry, "up", str(config), "--log-level", "warning"]
    return spawn(name, argv, port, logs, cpu)


def start_baseline(logs: Path, engine_url: str, cpu: int | None) -> Proc:
    port = free_ports(1)[0]
    argv = [sys.executable, str(BENCH / "baseline_proxy.py"), "--upstream", engine_url,
            "--port", str(port)]
    return spawn("baseline", argv, port, logs, cpu)


def start_sglang_router(logs: Path, engine_url: str, cpu: int | None,
                        policy: str = "round_robin", name: str = "sglang-router") -> Proc:
    """The Rust router from the ``sglang-router`` wheel over one worker: round robin, or
    ``policy`` (``cache_aware`` is the router's own default)."""
    if importlib.util.find_spec("sglang_router") is None:
        raise StartError("sglang-router is not installed (pip install sglang-router)")
    port, metrics_port = free_ports(2)  # its own metrics port: two routers may run
    argv = [sys.executable, "-m", "sglang_router.launch_router", "--worker-urls", engine_url,
            "--host", "127.0.0.1", "--port", str(port), "--policy", policy,
            "--prometheus-port", str(metrics_port), "--log-level", "warn"]
    return spawn(name, argv, port, logs, cpu)


READY_PATHS = {"direct": "/health", "llmgw": "/ready", "llmgw-gc-freeze": "/ready",
               "llmgw-traced": "/ready", "llmgw-main": "/ready", "llmgw-2w": "/ready",
               "baseline": "/health", "sglang-router": "/health", "sglang-router-ca": "/health"}
