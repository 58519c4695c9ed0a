"""Ray placement measured on this box: what placing a replica through Ray costs over a
local child process, and what losing a node costs the traffic.

- ``start``: one replica started through the seam the fleet uses (``Launcher.launch``),
  by the local launcher and by the Ray launcher on a Ray cluster of this box, for the
  fake engine and the embedded engine (``transformers``, model ``demo``). Timed from the
  call to the engine answering its health route (what ``launch`` waits for: ready) and
  to the first chat completion it answers at the address ``launch`` returned (serving).
  Median of ``--repeats`` starts each, local and Ray alternating (their order swapped
  each round) so drift on a shared box hits both; one untimed start of each first (the
  demo model built, Ray's worker pool warm), so this is the steady cost of a start.
- ``loss``: ``llmgw up`` (a subprocess, as an operator runs it) with a 2-replica
  fake-engine model on a head + 2 worker cluster, under a paced load of small requests;
  the node holding one replica is killed (``remove_node``, not graceful). Polled every
  50 ms or so: when the lost engine stops answering (its own health route), and from
  ``/admin/status`` when the gateway stops routing to it (ejected), when the launcher
  reports it lost (out of the pool) and when the replacement is ready; Ray's node table
  beside them; from the load, when the replacement answers its first request and every
  request's outcome.

The cluster is the Ray tests' (``tests/ray/conftest.local_cluster``): a head that runs
nothing of ours, two workers with 4 CPUs and 2 fake GPUs each, Ray's node health check at
1 s x 3, all its files under one /tmp/llmgw-ray-* folder removed at the end. Its nodes
listen on this machine's own address, not 127.0.0.1: Ray rewrites a loopback GCS address
to the node's address when a driver joins, so a loopback-only cluster cannot be joined
(connections to the machine's own address never leave it). The gateway and the load
use 127.0.0.1. Everything started here is stopped, on failure too (the cluster's
shutdown takes any engine left with its node). About 75 s on 2 cores.

    .venv/bin/python -m bench.ray.run [--repeats 3] [--scenarios start,loss]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import ray
from ray.cluster_utils import Cluster

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.elastic.run import table  # noqa: E402
from llmgw.checks import validate  # noqa: E402
from llmgw.config import GatewayConfig, ModelConfig, PlacementConfig  # noqa: E402
from llmgw.placement.base import Launcher  # noqa: E402
from llmgw.placement.local import LocalLauncher  # noqa: E402
from llmgw.placement.ray_launcher import RayLauncher  # noqa: E402
from tests.fleet.conftest import ADMIN_KEY, Outcome, chat, metric, send, status  # noqa: E402
from tests.ray.conftest import host_info, local_cluster, ray_config  # noqa: E402
from tests.support import ROOT, Server, start_gateway  # noqa: E402

START_NAMESPACE = "bench-start"
LOSS_NAMESPACE = "bench-loss"
# What the two engines are launched as; the embedded one as configs/ray.yaml places it.
ENGINES: dict[str, dict[str, Any]] = {
    "fake": {"engine": "fake", "model": "fake"},
    "transformers": {"engine": "transformers", "model": "demo",
                     "engine_args": {"max_batch_size": 16}, "placement": {"cpus": 2}},
}
# configs/ray.yaml's health interval: ejection is measured as an operator would see it.
HEALTH_INTERVAL_S = 2.0
POLL_S = 0.05


# --- start: local vs Ray -------------------------------------------------------------


def model_config(engine: str) -> ModelConfig:
    """One replica of ``engine``'s model, as `llmgw check` would accept it."""
    cfg = GatewayConfig.model_validate(
        {"models": [{"name": engine, "replicas": 1, **ENGINES[engine]}]})
    validate(cfg)
    return cfg.models[0]


@dataclass
class Starts:
    ready: list[float] = field(default_factory=list)
    serving: list[float] = field(default_factory=list)


async def start_once(launcher: Launcher, replica_id: str, model: ModelConfig,
                     client: httpx.AsyncClient) -> tuple[float, float]:
    """Seconds from ``launch`` to ready and to the first answered chat completion; the
    replica is stopped again (not timed)."""
    started = time.perf_counter()
    address = await launcher.launch(replica_id, model, role="mixed", version="bench")
    ready = time.perf_counter() - started
    try:
        answer = await client.post(address.url + "/v1/chat/completions",
                                   json=chat(model.upstream_model))
        answer.raise_for_status()
        return ready, time.perf_counter() - started
    finally:
        await launcher.stop(replica_id)


async def compare_starts(cluster: Cluster, repeats: int) -> list[list[str]]:
    logs = Path(tempfile.mkdtemp(prefix="llmgw-bench-logs-"))
    local = LocalLauncher(log_dir=logs)
    on_ray = RayLauncher(PlacementConfig(backend="ray", address=cluster.address,
                                         namespace=START_NAMESPACE))
    await on_ray.connect()
    launchers: dict[str, Launcher] = {"local": local, "ray": on_ray}
    rows = []
    try:
        async with httpx.AsyncClient(timeout=300) as client:
            for engine in ENGINES:
                model = model_config(engine)
                times = {kind: Starts() for kind in launchers}
                for kind, launcher in launchers.items():  # warm-up, not counted
                    await start_once(launcher, f"{engine}-{kind}-warm", model, client)
                for round_ in range(repeats):
                    order = list(launchers) if round_ % 2 == 0 else list(launchers)[::-1]
                    for kind in order:
                        ready, serving = await start_once(
                            launchers[kind], f"{engine}-{kind}-{round_}", model, client)
                        times[kind].ready.append(ready)
                        times[kind].serving.append(serving)
                        print(f"  {engine} {kind} #{round_}: ready {ready:.2f} s, serving "
                              f"{serving:.2f} s", flush=True)
                rows.append(start_row(engine, times["local"], times["ray"]))
    finally:
        # start_once stopped every replica; on a failure, what is left goes with the
        # cluster at the end.
        await local.close()
        await on_ray.close()
        shutil.rmtree(logs, ignore_errors=True)
    return rows


def start_row(engine: str, local: Starts, on_ray: Starts) -> list[str]:
    def median(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} s"

    ratio = statistics.median(on_ray.serving) / statistics.median(local.serving)
    extra = statistics.median(on_ray.serving) - statistics.median(local.serving)
    return [engine, median(local.ready), median(local.serving), median(on_ray.ready),
            median(on_ray.serving), f"{ratio:.2f}x (+{extra:.2f} s)"]


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


# --- loss: a node dies under load ----------------------------------------------------


@dataclass
class PacedLoad:
    """``workers`` threads, each sending one small chat completion every ``every_s``:
    steady, bounded traffic that leaves the CPU to the fleet. Every outcome is kept
    with the time (perf_counter) it ended."""

    url: str
    model: str
    workers: int = 4
    every_s: float = 0.05
    max_requests: int = 20_000
    ended: list[tuple[float, Outcome]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._run, daemon=True)
                         for _ in range(self.workers)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> list[tuple[float, Outcome]]:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        return self.ended

    def _run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.wait(self.every_s) and len(self.ended) < self.max_requests:
                outcome = send(client, self.url, chat(self.model, 8))
                with self._lock:
                    self.ended.append((time.perf_counter(), outcome))


@dataclass
class Timeline:
    """Seconds from the kill to each thing the gateway (or Ray) showed."""

    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, what: str, when: float, happened: bool) -> None:
        if happened and what not in self.marks:
            self.marks[what] = when

    def get(self, what: str) -> str:
        return f"{self.marks[what]:.2f} s" if what in self.marks else "not seen"


def answers(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=0.2).status_code == 200
    except httpx.HTTPError:
        return False


def watch_loss(gateway: Server, model: str, victim: dict[str, Any], before: set[str],
               killed_at: float, timeout_s: float) -> Timeline:
    """Poll the lost engine, the gateway's status and Ray's node table until a
    replacement is ready."""
    seen = Timeline()
    while time.perf_counter() - killed_at < timeout_s and "ready" not in seen.marks:
        if "engine_gone" not in seen.marks:
            seen.mark("engine_gone", time.perf_counter() - killed_at,
                      not answers(victim["url"]))
        pool = status(gateway)["models"][model]["pools"]["mixed"]
        now = time.perf_counter() - killed_at
        replicas = {r["id"]: r for r in pool["replicas"]}
        mine = replicas.get(victim["replica_id"])
        seen.mark("ejected", now, mine is None or not mine["healthy"])
        seen.mark("lost", now, mine is None)
        seen.mark("ready", now, any(r["state"] == "ready" and r["healthy"]
                                    for rid, r in replicas.items() if rid not in before))
        seen.mark("ray_dead", now, not any(n["Alive"] for n in ray.nodes()
                                           if n["NodeID"] == victim["node_id"]))
        time.sleep(POLL_S)
    return seen


def node_loss(cluster: Cluster, tmp: Path) -> list[tuple[str, str]]:
    model = "sturdy"
    config = ray_config(cluster, LOSS_NAMESPACE, [
        {"name": model, "engine": "fake", "model": "fake", "replicas": 2}],
        health={"interval_s": HEALTH_INTERVAL_S}, server={"admin_key": ADMIN_KEY})
    gateway = start_gateway(config, tmp)
    load = PacedLoad(gateway.url, model)
    try:
        before = {f"{model}-0", f"{model}-1"}
        hosts = {rid: host_info(LOSS_NAMESPACE, rid) for rid in sorted(before)}
        victim, survivor = hosts[f"{model}-0"], hosts[f"{model}-1"]
        assert victim["node_id"] != survivor["node_id"], f"replicas share a node: {hosts}"
        node = next(n for n in cluster.worker_nodes if n.node_id == victim["node_id"])
        load.start()
        time.sleep(2)  # steady traffic on both replicas before the kill
        killed_at = time.perf_counter()
        cluster.remove_node(node, allow_graceful=False)
        seen = watch_loss(gateway, model, victim, before, killed_at, 90)
        time.sleep(2)  # the replacement takes its share of the traffic
        ended = load.stop()
        lost_total = metric(gateway, "llmgw_replicas_lost_total", model=model)
        replacement = next(iter(set(ready_replicas(gateway, model)) - before), None)
        where = "none"
        if replacement is not None:
            moved_to = host_info(LOSS_NAMESPACE, replacement)["node_id"]
            where = "the surviving worker" if moved_to == survivor["node_id"] \
                else f"node {moved_to[:8]}"
    finally:
        load.stop()
        gateway.stop()
        llmgw_down(tmp / f"gateway-{gateway.port}.yaml")
    failed = [o for _, o in ended if o.status != 200 or not o.complete]
    first_served = min((t - killed_at for t, o in ended
                        if o.replica == replacement and o.complete), default=None)
    return [
        ("health interval (gateway) / node health check (Ray)",
         f"{HEALTH_INTERVAL_S:g} s / 1 s x 3"),
        ("kill -> the lost engine stops answering", seen.get("engine_gone")),
        ("kill -> gateway stops routing to it (ejected)", seen.get("ejected")),
        ("kill -> replica reported lost, out of the pool", seen.get("lost")),
        ("kill -> Ray marks the node dead", seen.get("ray_dead")),
        ("kill -> replacement ready", f"{seen.get('ready')} ({replacement} on {where})"),
        ("kill -> replacement answers a request",
         f"{first_served:.2f} s" if first_served is not None else "not seen"),
        ("requests / failed", f"{len(ended)} / {len(failed)}"),
        ("llmgw_replicas_lost_total", f"{lost_total:g}" if lost_total is not None else "0"),
    ]


def ready_replicas(gateway: Server, model: str) -> list[str]:
    pool = status(gateway)["models"][model]["pools"]["mixed"]
    return [r["id"] for r in pool["replicas"] if r["state"] == "ready" and r["healthy"]]


def llmgw_down(config: Path) -> None:
    """Every engine the gateway left on the cluster (detached actors) stopped."""
    subprocess.run([sys.executable, "-m", "llmgw", "down", str(config)], cwd=ROOT,
                   capture_output=True, text=True, timeout=120, check=True)


# --- main ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scenarios", default="start,loss")
    args = parser.parse_args(argv)
    scenarios = args.scenarios.split(",")
    load = os.getloadavg()[0]
    began = time.perf_counter()
    with local_cluster() as cluster, tempfile.TemporaryDirectory(
            prefix="llmgw-bench-ray-") as tmp:
        print(f"cluster: head + 2 workers at {cluster.address}; load average {load:.1f} "
              f"on {os.cpu_count()} CPUs", flush=True)
        if "start" in scenarios:
            rows = asyncio.run(compare_starts(cluster, args.repeats))
            print(f"\nreplica start, launch -> ready / serving (median of {args.repeats})\n")
            print(markdown(["engine", "local ready", "local serving", "Ray ready",
                            "Ray serving", "Ray / local (serving)"], rows), flush=True)
        if "loss" in scenarios:
            table("node loss under load (2 fake-engine replicas, 4 x 20 req/s)",
                  node_loss(cluster, Path(tmp)))
    print(f"\ntook {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
