"""`llmgw up` with `placement.backend: ray` on a real Ray cluster (head + 2 worker nodes
with fake GPUs, on this box), its replicas fake-engine processes started by Ray actors:
GPUs per replica on one node, ranks and replicas spread, a node lost under load, a
gateway restart that adopts the running engines, autoscaling, and a replica the cluster
has no room for; a tool worker placed, guarded by its gateway's token, replaced and
removed like a replica. Real engines placed by Ray are in test_ray_engines.py."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import ray
from ray.cluster_utils import Cluster
from ray.util.placement_group import placement_group_table

from tests.fleet.conftest import (
    ADMIN_KEY,
    Load,
    chat,
    failures,
    metric,
    ready_ids,
    status,
    wait_for,
    wait_for_requests,
)
from tests.ray.conftest import (
    WORKER,
    actor_names,
    group_nodes,
    host_info,
    local_cluster,
    ray_config,
    settled,
)
from tests.support import ROOT, Server, start_gateway, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with local_cluster() as running:
        yield running


def fake(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "engine": "fake", "model": "fake", **fields}


def gateway_for(cluster: Cluster, tmp: Path, namespace: str, models: list[dict[str, Any]],
                ready_path: str = "/ready", **extra: Any) -> Server:
    config = ray_config(cluster, namespace, models, **extra)
    config["server"] = {"admin_key": ADMIN_KEY}
    gateway = start_gateway(config, tmp, ready_path=ready_path)
    try:
        if ready_path == "/ready":
            wait_for(gateway, settled, 120, "every replica placed and ready")
    except AssertionError:
        gateway.stop()
        raise
    return gateway


def down(gateway_config: Path) -> str:
    """`llmgw down` on the config a gateway ran: every engine of its namespace stopped."""
    done = subprocess.run([sys.executable, "-m", "llmgw", "down", str(gateway_config)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def config_of(gateway: Server, tmp: Path) -> Path:
    return tmp / f"gateway-{gateway.port}.yaml"


def worker_ids(cluster: Cluster) -> set[str]:
    return {node.node_id for node in cluster.worker_nodes}


def test_a_replica_gets_its_gpus_on_one_node_and_serves(cluster: Cluster,
                                                         tmp_path: Path) -> None:
    gateway = gateway_for(cluster, tmp_path, "gpus", [
        fake("tp", replicas=1, placement={"gpus": 2}),
        # Small models sharing a GPU: each replica takes half of one.
        fake("half", replicas=2, placement={"gpus": 0.5})])
    try:
        halves = [host_info("gpus", f"half-{i}")["cuda_visible_devices"] for i in range(2)]
        assert all(len(devices.split(",")) == 1 for devices in halves)
        nodes = group_nodes("tp-0")
        assert nodes is not None and len(nodes) == 1 and nodes[0] in worker_ids(cluster)
        info = host_info("gpus", "tp-0")
        assert info["node_id"] == nodes[0]
        assert len(info["cuda_visible_devices"].split(",")) == 2
        answer = httpx.post(gateway.url + "/v1/chat/completions", json=chat("tp"), timeout=30)
        assert answer.status_code == 200 and answer.headers["x-llmgw-replica"] == "tp-0"
        # The gateway talks to the engine itself, at the address the actor reported.
        assert status(gateway)["models"]["tp"]["pools"]["mixed"]["replicas"][0]["url"] \
            == info["url"]
    finally:
        gateway.stop()
        down(config_of(gateway, tmp_path))
    assert actor_names("gpus") == [] and group_nodes("tp-0") is None


def test_ranks_of_a_replica_and_replicas_of_a_pool_spread_over_nodes(
        cluster: Cluster, tmp_path: Path) -> None:
    gateway = gateway_for(cluster, tmp_path, "spread", [
        # One engine over two nodes: rank 1 runs headless and joins rank 0.
        fake("wide", replicas=1, placement={"gpus": 2, "nodes": 2, "strategy": "SPREAD"}),
        fake("pair", replicas=2, placement={"gpus": 1})])
    try:
        wide = group_nodes("wide-0")
        assert wide is not None and len(set(wide)) == 2
        rank0 = host_info("spread", "wide-0", 0)
        rank1 = host_info("spread", "wide-0", 1)
        assert rank1["master"] == rank0["master"] and rank0["node_id"] != rank1["node_id"]
        wait_until(lambda: httpx.get(rank0["url"] + "/fake/topology").json()["joined"] == [1],
                   30, "rank 1 to join rank 0")
        pair = [host_info("spread", f"pair-{i}")["node_id"] for i in range(2)]
        assert len(set(pair)) == 2, "a pool's replicas go to different nodes when they can"
        answer = httpx.post(gateway.url + "/v1/chat/completions", json=chat("wide"), timeout=30)
        assert answer.status_code == 200
    finally:
        gateway.stop()
        down(config_of(gateway, tmp_path))


def test_a_lost_node_moves_its_replica_and_no_request_fails(cluster: Cluster,
                                                            tmp_path: Path) -> None:
    # 10 ms a token: each request takes ~40 ms, so the bounded load outlasts the loss.
    gateway = gateway_for(cluster, tmp_path, "loss", [
        fake("sturdy", replicas=2, engine_args={"token_delay_ms": 10})])
    load = Load(gateway.url, lambda n: chat("sturdy", 4), workers=4, max_requests=20000)
    try:
        infos = {rid: host_info("loss", rid) for rid in ("sturdy-0", "sturdy-1")}
        assert infos["sturdy-0"]["node_id"] != infos["sturdy-1"]["node_id"]
        victim = next(n for n in cluster.worker_nodes
                      if n.node_id == infos["sturdy-0"]["node_id"])
        load.start()
        wait_for_requests(load, 50)
        cluster.remove_node(victim, allow_graceful=False)
        try:
            moved = wait_for(gateway, lambda s: ready_ids(gateway, "sturdy") ==
                             ["sturdy-1", "sturdy-2"], 60, "a replacement for the lost replica")
            wait_for_requests(load, 100)
        finally:
            outcomes = load.stop()
            cluster.add_node(**WORKER)  # the next tests have two workers again
            cluster.wait_for_nodes()
        assert failures(outcomes) == [], failures(outcomes)[:3]
        assert not psutil.pid_exists(infos["sturdy-0"]["pid"]) or \
            psutil.Process(infos["sturdy-0"]["pid"]).status() == psutil.STATUS_ZOMBIE
        replacement = host_info("loss", "sturdy-2")
        assert replacement["node_id"] != infos["sturdy-0"]["node_id"]
        assert moved["models"]["sturdy"]["pools"]["mixed"]["target"] == 2
        assert metric(gateway, "llmgw_replicas_lost_total", model="sturdy") == 1
        assert {o.replica for o in outcomes[-50:]} == {"sturdy-1", "sturdy-2"}
    finally:
        load.stop()
        gateway.stop()
        down(config_of(gateway, tmp_path))


def test_a_restarted_gateway_adopts_the_running_engines(cluster: Cluster,
                                                        tmp_path: Path) -> None:
    models = [fake("kept", replicas=1)]
    first = gateway_for(cluster, tmp_path, "adopt", models)
    before = host_info("adopt", "kept-0")
    first.stop()
    # Its engine outlived it: same process, still answering.
    assert psutil.pid_exists(before["pid"]) and httpx.get(before["url"] + "/health").is_success
    second = gateway_for(cluster, tmp_path, "adopt", models)
    try:
        assert "adopted 1 running replica" in second.output()
        assert ready_ids(second, "kept") == ["kept-0"]
        assert host_info("adopt", "kept-0")["pid"] == before["pid"]
        answer = httpx.post(second.url + "/v1/chat/completions", json=chat("kept"), timeout=30)
        assert answer.status_code == 200 and answer.headers["x-llmgw-replica"] == "kept-0"
    finally:
        second.stop()
    # A config whose engine runs otherwise (a new flag) replaces the adopted replica.
    changed = [fake("kept", replicas=1, engine_args={"token_delay_ms": 1})]
    third = gateway_for(cluster, tmp_path, "adopt", changed)
    try:
        wait_for(third, lambda s: ready_ids(third, "kept") == ["kept-1"], 60,
                 "the old version replaced")
        wait_until(lambda: not psutil.pid_exists(before["pid"]), 30, "the old engine to stop")
        # The engine stops first, then its actor goes.
        wait_until(lambda: actor_names("adopt") == ["llmgw/directory", "llmgw/kept-1/rank0"],
                   30, "the old replica's actor removed")
    finally:
        third.stop()
        out = down(config_of(third, tmp_path))
    assert "stopped 1 replica" in out and actor_names("adopt") == []


def test_autoscaling_adds_and_removes_placement_groups(cluster: Cluster,
                                                        tmp_path: Path) -> None:
    gateway = gateway_for(cluster, tmp_path, "scale", [fake(
        "elastic", engine_args={"token_delay_ms": 20},
        autoscaling={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
                     "upscale_delay_s": 0.5, "downscale_delay_s": 2,
                     "look_back_period_s": 1, "max_kv_usage": None,
                     "max_engine_queue": None})])
    load = Load(gateway.url, lambda n: chat("elastic", 100, stream=True), workers=3,
                max_requests=600)
    try:
        load.start()
        wait_for(gateway, lambda s: ready_ids(gateway, "elastic") == ["elastic-0", "elastic-1"],
                 60, "a second replica under load")
        assert group_nodes("elastic-1") is not None
    finally:
        outcomes = load.stop()
    try:
        assert failures(outcomes) == []
        wait_for(gateway, lambda s: len(s["models"]["elastic"]["pools"]["mixed"]["replicas"])
                 == 1, 60, "back to one replica without load")
        gone = ({"elastic-0", "elastic-1"} - set(ready_ids(gateway, "elastic"))).pop()
        wait_until(lambda: group_nodes(gone) is None, 30, "the drained replica's group removed")
        assert f"llmgw/{gone}/rank0" not in actor_names("scale")
    finally:
        gateway.stop()
        down(config_of(gateway, tmp_path))


def test_a_replica_the_cluster_cannot_place_waits_visibly_and_hangs_nothing(
        cluster: Cluster, tmp_path: Path) -> None:
    gateway = gateway_for(cluster, tmp_path, "unplaced", [
        fake("small", replicas=1), fake("huge", replicas=1, placement={"gpus": 8})],
        ready_path="/health", placement={"placement_timeout_s": 5})
    try:
        # The gateway serves while the replica still waits for room (its first 5 s).
        placing = wait_for(gateway, lambda s: any(
            (p["phase"] or "").startswith("placing")
            for p in s["models"]["huge"]["pools"]["mixed"]["starting"]), 4,
            "the replica waiting for placement")["models"]["huge"]["pools"]["mixed"]
        assert placing["last_error"] is None
        seen = wait_for(gateway, lambda s: s["models"]["huge"]["pools"]["mixed"]
                        .get("last_error"), 30, "the placement timeout reported")
        error = seen["models"]["huge"]["pools"]["mixed"]["last_error"]
        assert "could not be placed within 5s" in error and "'GPU': 8.0" in error
        # The gateway serves the rest meanwhile, and keeps trying (the group is demand).
        # (The small replica starts beside the wait; on a loaded machine it may take longer
        # than the placement timeout.)
        wait_for(gateway, lambda s: ready_ids(gateway, "small") == ["small-0"], 60,
                 "the small replica ready")
        answer = httpx.post(gateway.url + "/v1/chat/completions", json=chat("small"), timeout=30)
        assert answer.status_code == 200
        wait_for(gateway, lambda s: any(p["phase"] and p["phase"].startswith("placing")
                                        for p in s["models"]["huge"]["pools"]["mixed"]
                                        ["starting"]), 30, "a retry waiting for placement")
        assert (metric(gateway, "llmgw_replica_starts_total", model="huge",
                       result="failed") or 0) >= 1
    finally:
        gateway.stop()
        down(config_of(gateway, tmp_path))
    assert actor_names("unplaced") == []


def test_several_gateways_share_one_fleet_and_a_follower_takes_over(
        cluster: Cluster, tmp_path: Path) -> None:
    models = [fake("shared", replicas=2, routing="round-robin")]
    owner = gateway_for(cluster, tmp_path, "shared", models)
    follower = gateway_for(cluster, tmp_path, "shared", models)
    try:
        assert "following the fleet's owner" in follower.output()
        urls = {rid: host_info("shared", rid)["url"] for rid in ("shared-0", "shared-1")}
        # The follower routes to the owner's replicas and launched none of its own.
        served = set()
        for _ in range(4):
            answer = httpx.post(follower.url + "/v1/chat/completions", json=chat("shared"),
                                timeout=30)
            assert answer.status_code == 200
            served.add(answer.headers["x-llmgw-replica"])
        assert served == {"shared-0", "shared-1"}
        pool = status(follower)["models"]["shared"]["pools"]["mixed"]
        assert {r["id"]: r["url"] for r in pool["replicas"]} == urls
        assert actor_names("shared") == ["llmgw/directory", "llmgw/shared-0/rank0",
                                         "llmgw/shared-1/rank0"]
        pids = {rid: host_info("shared", rid)["pid"] for rid in urls}
        owner.stop()  # releases the lease: the follower owns the fleet from now on
        wait_for(follower, lambda s: s["models"]["shared"]["pools"].get("mixed", {})
                 .get("target") == 2, 30, "the follower to take the fleet over")
        assert "takes it over" in follower.output()
        assert {rid: host_info("shared", rid)["pid"] for rid in urls} == pids
        assert ready_ids(follower, "shared") == ["shared-0", "shared-1"]
        answer = httpx.post(follower.url + "/v1/chat/completions", json=chat("shared"),
                            timeout=30)
        assert answer.status_code == 200
    finally:
        owner.stop()
        follower.stop()
        down(config_of(follower, tmp_path))


def tool_workers(namespace: str) -> set[str]:
    """The tool workers with a live actor, as the gateway names them (e.g. ``r-0.1``);
    by name only: an actor being stopped or started need not answer."""
    return {name.split("/")[2] for name in actor_names(namespace)
            if name.startswith("llmgw-tool/")}  # llmgw-tool/<gateway>/<worker>/rank0


def tool_hosts(namespace: str) -> dict[str, dict[str, Any]]:
    """Tool worker -> what its actor says."""
    hosts = {}
    for name in actor_names(namespace):
        if name.startswith("llmgw-tool/"):
            actor = ray.get_actor(name, namespace=namespace)
            hosts[name.split("/")[2]] = ray.get(actor.info.remote(), timeout=30)
    return hosts


def tool_groups() -> list[str]:
    return [entry["name"] for entry in placement_group_table().values()
            if entry["name"].startswith("llmgw-tool/") and entry["state"] != "REMOVED"]


def test_a_tool_worker_is_placed_guarded_replaced_and_removed_like_a_replica(
        cluster: Cluster, tmp_path: Path) -> None:
    gate = tmp_path / "gate"  # never created: a `slow` call stays in flight
    gateway = gateway_for(cluster, tmp_path, "tools", [fake("m", replicas=1)], tools=[
        {"name": "r", "import_path": "tests.fakes.tools:Recorder", "replicas": 1,
         "init_args": {"gate": str(gate)}, "placement": {"cpus": 2}}])
    try:
        # On Ray `llmgw up` does not wait for tool workers: until this one runs, its
        # tool answers 503.
        wait_until(lambda: metric(gateway, "llmgw_tool_replica_healthy", deployment="r",
                                  replica="r-0") == 1, 60, "the tool worker to run")
        (worker, info), = tool_hosts("tools").items()
        # On a worker node (the head, where the gateway runs, has no CPUs to give), in
        # a group of its own with the tool's resources, serving on the node's address.
        assert worker == "r-0" and info["node_id"] in worker_ids(cluster)
        assert info["url"].startswith(f"http://{info['node_ip']}:")
        assert len(tool_groups()) == 1
        with httpx.Client(base_url=gateway.url, timeout=60) as client:
            echo = client.post("/v1/tools/r_echo", json={"arguments": {"text": "hi"}})
            assert echo.status_code == 200, echo.text
            assert echo.json()["output"]["pid"] == info["pid"]
            # The worker takes calls from its gateway only: the tool never runs.
            for headers in ({}, {"x-llmgw-tool-token": "guess"}):
                refused = httpx.post(info["url"] + "/call/square", json={"n": 3},
                                     headers=headers, timeout=30)
                assert refused.status_code == 401, refused.text
            assert client.post("/v1/tools/r_batch_sizes",
                               json={"arguments": {}}).json()["output"] == []
            # Its actor dies under a call: the call fails clearly, a new worker serves.
            with ThreadPoolExecutor(1) as pool:
                held = pool.submit(client.post, "/v1/tools/r_slow",
                                   json={"arguments": {"marker": "x"}})
                wait_until(lambda: metric(gateway, "llmgw_tool_in_flight_calls",
                                          deployment="r") == 1, 30, "the call in flight")
                ray.kill(ray.get_actor(next(n for n in actor_names("tools")
                                            if n.startswith("llmgw-tool/")), "tools"))
                lost = held.result()
            assert lost.status_code == 502 and lost.json()["error"]["code"] == \
                "tool_worker_lost", lost.text
            # Meanwhile it has no worker: calls get 503 tool_unavailable.
            wait_until(lambda: metric(gateway, "llmgw_tool_replica_restarts_total",
                                      deployment="r", replica="r-0") == 1, 60, "a new worker")
            again = client.post("/v1/tools/r_echo", json={"arguments": {"text": "hi"}})
            assert again.status_code == 200, again.text
            assert again.json()["output"]["pid"] == tool_hosts("tools")["r-0.1"]["pid"]
        assert not psutil.pid_exists(info["pid"]) or \
            psutil.Process(info["pid"]).status() == psutil.STATUS_ZOMBIE
        # `llmgw down` stops tool workers too (a running gateway starts its own again).
        assert "and 1 tool worker(s)" in down(config_of(gateway, tmp_path))
        assert "r-0.1" not in tool_workers("tools")
    finally:
        gateway.stop()
        down(config_of(gateway, tmp_path))
    # The gateway's stop removed its workers, actors and groups.
    assert tool_workers("tools") == set() and tool_groups() == []


def test_a_tool_worker_the_cluster_has_no_room_for_yet_starts_once_a_node_joins(
        cluster: Cluster, tmp_path: Path) -> None:
    # No node has the resource: the gateway serves its model meanwhile, as it does
    # for a replica that waits for room, and the tool answers 503 until its worker runs.
    gateway = gateway_for(cluster, tmp_path, "toolroom", [fake("m", replicas=1)], tools=[
        {"name": "r", "import_path": "tests.fakes.tools:Recorder", "replicas": 1,
         "placement": {"resources": {"toolroom": 1}}}],
        placement={"placement_timeout_s": 5})
    joined = None

    def echo(client: httpx.Client) -> httpx.Response:
        return client.post("/v1/tools/r_echo", json={"arguments": {"text": "hi"}})

    try:
        with httpx.Client(base_url=gateway.url, timeout=60) as client:
            waiting = echo(client)
            assert waiting.status_code == 503, waiting.text
            assert waiting.json()["error"]["code"] == "tool_unavailable"
            chat_answer = client.post("/v1/chat/completions", json=chat("m"))
            assert chat_answer.status_code == 200, chat_answer.text
            joined = cluster.add_node(num_cpus=1, resources={"toolroom": 1})
            cluster.wait_for_nodes()
            wait_until(lambda: echo(client).status_code == 200, 90,
                       "the tool worker placed on the node that joined")
            (worker, info), = tool_hosts("toolroom").items()
            assert worker.startswith("r-0") and info["node_id"] == joined.node_id
            assert echo(client).json()["output"]["pid"] == info["pid"]
    finally:
        gateway.stop()
        down(config_of(gateway, tmp_path))
        if joined is not None:  # the next tests have the module's two workers
            cluster.remove_node(joined)
    assert tool_workers("toolroom") == set()
