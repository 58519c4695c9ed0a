"""`llmgw up configs/workers.yaml` (two workers, two fake-engine replicas) as an operator
runs it: both worker processes serve the one port, the engines start once, an admin key
or a reload made through one worker holds in the other at once, /metrics sums the
workers, a killed worker is replaced while the other keeps serving, and a stop leaves no
process and no run directory behind. An overlay adds an attached model with LoRA on a
fake engine that follows vLLM's adapter protocol (a second load of a name is refused),
for an adapter registered through one worker and loaded by both."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from tests.support import (
    ROOT,
    Server,
    check_like_llmgw,
    free_port,
    start_fake_engine,
    start_gateway,
    wait_until,
)

pytestmark = pytest.mark.e2e

ADMIN_KEY = "workers-admin-secret"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
HI = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def write_overlay(tmp: Path, engine_url: str, failing_url: str | None,
                  **server: object) -> Path:
    """The test's config over workers.yaml: its state dir, an attached LoRA model, a model
    whose second replica answers every request with a 500 (ejected after two; none when
    ``failing_url`` is None), and ``server`` settings (a reload rewrites it)."""
    overlay = tmp / "overlay.yaml"
    base = {
        "name": "base",
        "engine": "vllm",
        "url": [engine_url],
        "lora": {"roots": [str(tmp / "adapters")]},
    }
    urls = [engine_url] if failing_url is None else [engine_url, failing_url]
    flaky = {"name": "flaky", "engine": "openai", "url": urls,
             "served_model_name": "fake", "routing": "round-robin", "max_attempts": 2}
    # Ejected for longer than the module runs: it stays out once it is.
    outlier = {"consecutive_failures": 2, "base_ejection_s": 3600, "max_ejection_s": 3600}
    overlay.write_text(yaml.safe_dump({
        "server": {"state_dir": str(tmp / "state"), **server},
        "health": {"outlier": outlier},
        "models": [base, flaky],
    }))
    return overlay


class Up:
    def __init__(self, server: Server, tmp: Path, engine: Server, failing: Server) -> None:
        self.server, self.tmp, self.engine, self.failing = server, tmp, engine, failing
        made = httpx.post(
            server.url + "/admin/keys", headers=ADMIN, timeout=30, json={"name": "tests"}
        )
        assert made.status_code == 201, made.text
        # workers.yaml turns auth on with no configured key: clients use runtime keys.
        self.client_key = {"authorization": f"Bearer {made.json()['key']}"}

    def processes(self, module: str) -> list[psutil.Process]:
        """The supervisor's children running ``python -m module``."""
        found = []
        for child in psutil.Process(self.server.proc.pid).children():
            try:
                if module in child.cmdline():
                    found.append(child)
            except psutil.NoSuchProcess:
                continue
        return found

    def worker_pids(self) -> dict[int, int]:
        """Worker index -> pid."""
        return {
            int(p.cmdline()[p.cmdline().index("--index") + 1]): p.pid
            for p in self.processes("llmgw.workers.worker")
        }

    def reconfigure(self, failing: bool = True, **server: object) -> None:
        """``failing``: whether the model ``flaky`` keeps its failing replica."""
        write_overlay(self.tmp, self.engine.url, self.failing.url if failing else None,
                      **server)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    tmp = tmp_path_factory.mktemp("workers")
    (tmp / "adapters").mkdir()
    engine = start_fake_engine(name="base")
    with contextlib.ExitStack() as stack:
        stack.callback(engine.stop)
        failing = start_fake_engine("--fail-status", "500", name="fails")
        stack.callback(failing.stop)
        files = [ROOT / "configs" / "workers.yaml",
                 write_overlay(tmp, engine.url, failing.url)]
        check_like_llmgw(files)
        port = free_port()
        argv = [sys.executable, "-m", "llmgw", "up", *map(str, files), "--port", str(port)]
        server = Server(argv, port, "/ready", timeout_s=120, env={"LLMGW_ADMIN_KEY": ADMIN_KEY})
        stack.callback(server.stop)
        running = Up(server, tmp, engine, failing)
        # /ready answered from one worker; the other may still be starting.
        wait_until(lambda: len(running.worker_pids()) == 2, 60, "two worker processes")
        yield running


def one_request(
    up: Up, headers: dict[str, str] | None = None, body: dict[str, object] | None = None
) -> httpx.Response:
    """On a new connection each time: the kernel picks the worker per connection."""
    return httpx.post(
        up.server.url + "/v1/chat/completions",
        json=body or HI,
        headers=headers or up.client_key,
        timeout=30,
    )


def by_worker(
    up: Up,
    check: Callable[[httpx.Response], None],
    headers: dict[str, str] | None = None,
    body: dict[str, object] | None = None,
    limit: int = 400,
) -> dict[str, int]:
    """Requests until both workers answered at least twice; each answer is ``check``ed.
    Returns answers per worker."""
    seen: dict[str, int] = {}
    for _ in range(limit):
        response = one_request(up, headers, body)
        check(response)
        worker = response.headers["x-llmgw-worker"]
        seen[worker] = seen.get(worker, 0) + 1
        if len(seen) == 2 and min(seen.values()) >= 2:
            return seen
    raise AssertionError(f"{limit} connections never reached both workers: {seen}")


def answered(status: int) -> Callable[[httpx.Response], None]:
    """A check of each worker's answer: its status."""

    def check(response: httpx.Response) -> None:
        assert response.status_code == status, response.text

    return check


served = answered(200)


def test_both_workers_serve_one_port_over_engines_started_once(up: Up) -> None:
    seen = by_worker(up, served)
    assert set(seen) == {"0", "1"}
    assert len(up.processes("llmgw.engines.fake")) == 2  # replicas: 2, not 2 per worker
    for worker in up.processes("llmgw.workers.worker"):  # no worker launched its own
        assert worker.children() == []


def test_an_admin_key_made_through_one_worker_works_in_every_worker(up: Up) -> None:
    made = httpx.post(
        up.server.url + "/admin/keys", headers=ADMIN, timeout=30, json={"name": "alice"}
    )
    assert made.status_code == 201, made.text
    key = {"authorization": f"Bearer {made.json()['key']}"}
    # Right after the call returned, on whichever worker: never a 401.
    assert set(by_worker(up, served, headers=key)) == {"0", "1"}
    revoked = httpx.delete(up.server.url + "/admin/keys/alice", headers=ADMIN, timeout=30)
    assert revoked.status_code == 200, revoked.text
    assert set(by_worker(up, answered(401), headers=key)) == {"0", "1"}


def _sample(up: Up, series: str) -> float | None:
    """The value of ``series`` (name and labels as exposed) in the /metrics of whichever
    worker answers; None when it is not there."""
    for line in httpx.get(up.server.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def _reloads_applied(up: Up) -> float:
    value = _sample(up, 'llmgw_config_reloads_total{result="applied"}')
    assert value is not None, "no llmgw_config_reloads_total in /metrics"
    return value


def test_a_reload_through_one_worker_reaches_every_worker(up: Up) -> None:
    before = _reloads_applied(up)
    up.reconfigure(request_bounds={"max_tokens": 4})
    reloaded = httpx.post(up.server.url + "/admin/reload", headers=ADMIN, timeout=60)
    assert reloaded.status_code == 200, reloaded.text
    # Every process reloaded; the gateway reloaded once.
    assert _reloads_applied(up) == before + 1

    def bounded(response: httpx.Response) -> None:
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "max_tokens"

    assert set(by_worker(up, bounded)) == {"0", "1"}


def test_sighup_to_the_top_process_reloads_every_worker(up: Up) -> None:
    up.reconfigure()
    os.kill(up.server.proc.pid, signal.SIGHUP)  # the bounds of the test before go again

    def statuses() -> dict[str, set[int]]:
        seen: dict[str, set[int]] = {}
        by_worker(
            up, lambda r: seen.setdefault(r.headers["x-llmgw-worker"], set()).add(r.status_code)
        )
        return seen

    # A signal has no answer to wait for: poll, bounded, until every worker reloaded.
    wait_until(lambda: statuses() == {"0": {200}, "1": {200}}, 60, "both workers reloaded")


def test_an_adapter_registered_through_one_worker_serves_from_every_worker(up: Up) -> None:
    (up.tmp / "adapters" / "sql").mkdir()
    made = httpx.post(
        up.server.url + "/admin/adapters",
        headers=ADMIN,
        timeout=30,
        json={"model": "base", "name": "sql", "source": "sql"},
    )
    assert made.status_code == 201, made.text
    body = {**HI, "model": "sql"}
    # Each worker loads it on the one engine; the second finds it loaded by the first.
    assert set(by_worker(up, served, body=body)) == {"0", "1"}
    removed = httpx.delete(up.server.url + "/admin/adapters/sql", headers=ADMIN, timeout=30)
    assert removed.status_code == 200, removed.text
    assert set(by_worker(up, answered(404), body=body)) == {"0", "1"}


def _requests_total(up: Up) -> float:
    return _sample(up, 'llmgw_requests_total{endpoint="chat",model="chat",status="200"}') or 0.0


def test_metrics_sum_every_worker(up: Up) -> None:
    before = _requests_total(up)
    seen = by_worker(up, served)
    # Whichever worker answers /metrics, it counts both workers' requests.
    assert {_requests_total(up) for _ in range(6)} == {before + sum(seen.values())}


def _ejected(up: Up) -> float | None:
    """``llmgw_replica_ejected`` of the failing replica, as the worker that answers says."""
    return _sample(up, 'llmgw_replica_ejected{model="flaky",replica="flaky-1"}')


def test_an_ejection_shows_in_the_metrics_of_every_worker(up: Up) -> None:
    flaky = {**HI, "model": "flaky"}
    for _ in range(100):  # round robin: every other request fails once, then is retried
        assert one_request(up, body=flaky).status_code == 200
        if _ejected(up) == 1.0:
            break
    # Whichever worker answers the scrape (a new connection each), the replica is out.
    assert [_ejected(up) for _ in range(8)] == [1.0] * 8


def test_a_replica_that_left_leaves_the_metrics_of_every_worker(up: Up) -> None:
    def shown() -> list[tuple[bool, bool]]:  # whichever worker answers each scrape
        texts = [httpx.get(up.server.url + "/metrics", timeout=10).text for _ in range(8)]
        return [('replica="flaky-0"' in t, 'replica="flaky-1"' in t) for t in texts]

    assert shown() == [(True, True)] * 8
    up.reconfigure(failing=False)
    reloaded = httpx.post(up.server.url + "/admin/reload", headers=ADMIN, timeout=60)
    assert reloaded.status_code == 200, reloaded.text

    def replicas_left() -> set[str]:  # flaky's replicas, as eight scrapes' workers see them
        statuses = [httpx.get(up.server.url + "/admin/status", headers=ADMIN, timeout=10)
                    .json()["models"]["flaky"]["pools"]["mixed"]["replicas"]
                    for _ in range(8)]
        return {r["id"] for replicas in statuses for r in replicas}

    # The reload drains flaky-1, then every worker lets it go.
    wait_until(lambda: replicas_left() == {"flaky-0"}, 60, "flaky-1 to leave every worker")
    # The shared metric files keep flaky-1's values; no worker shows them.
    assert shown() == [(True, False)] * 8


def test_in_flight_gauges_add_up_over_workers(up: Up) -> None:
    body = {**HI, "max_tokens": 200, "stream": True}  # 4 s at the engine's pace
    reading = []  # kept: a line iterator dropped early closes its stream
    with contextlib.ExitStack() as stack:
        for worker in ("0", "1"):  # one stream open in each worker
            client = stack.enter_context(contextlib.closing(pinned_to(up, worker)))
            stream = stack.enter_context(client.stream("POST", "/v1/chat/completions", json=body))
            reading.append(stream.iter_lines())
            assert next(reading[-1]).startswith("data: ")
        text = httpx.get(up.server.url + "/metrics", timeout=10).text
        open_now = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith('llmgw_replica_in_flight_requests{model="chat"')
        )
        assert open_now == 2.0, text


def test_llmgw_status_works_through_a_worker(up: Up) -> None:
    status = subprocess.run(
        [sys.executable, "-m", "llmgw", "status", up.server.url, "--admin-key", ADMIN_KEY],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    assert "chat-0" in status.stdout and "chat-1" in status.stdout


def pinned_to(up: Up, worker: str) -> httpx.Client:
    """A client whose one keep-alive connection the kernel gave to ``worker``."""
    for _ in range(200):
        client = httpx.Client(
            base_url=up.server.url,
            timeout=30,
            headers=up.client_key,
            limits=httpx.Limits(max_connections=1),
        )
        if client.post("/v1/chat/completions", json=HI).headers["x-llmgw-worker"] == worker:
            return client
        client.close()
    raise AssertionError(f"200 connections never reached worker {worker}")


def test_a_killed_worker_is_replaced_while_the_other_serves(up: Up) -> None:
    pids = up.worker_pids()
    # One keep-alive connection pinned to worker 1, with a stream open on it.
    with contextlib.closing(pinned_to(up, "1")) as pinned:
        body = {**HI, "max_tokens": 40, "stream": True}
        with pinned.stream("POST", "/v1/chat/completions", json=body) as stream:
            assert stream.headers["x-llmgw-worker"] == "1"
            lines = stream.iter_lines()
            assert next(lines).startswith("data: ")
            psutil.Process(pids[0]).kill()
            rest = list(lines)
        assert [line for line in rest if line][-1] == "data: [DONE]"
        assert not [line for line in rest if '"error"' in line]
        for _ in range(5):  # the other worker goes on serving on the same connection
            served(pinned.post("/v1/chat/completions", json=HI))
    wait_until(lambda: up.worker_pids().get(0) not in (None, pids[0]), 60, "worker 0 started again")
    wait_until(
        lambda: one_request(up).headers["x-llmgw-worker"] == "0", 60, "the new worker 0 to serve"
    )
    assert up.worker_pids()[1] == pids[1]
    assert len(up.processes("llmgw.engines.fake")) == 2  # the engines never noticed


def test_stop_drains_every_worker_and_leaves_nothing_behind(up: Up) -> None:
    workers = up.processes("llmgw.workers.worker")
    run_dir = Path(workers[0].cmdline()[workers[0].cmdline().index("--run-dir") + 1])
    assert run_dir.is_dir()
    engines = up.processes("llmgw.engines.fake")
    assert up.server.stop() == 0
    for process in [*workers, *engines]:
        assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    assert not run_dir.exists()


def test_a_supervisor_killed_hard_takes_its_workers_and_engines_along(
    tmp_path: Path,
) -> None:
    gateway = start_gateway(
        {
            "server": {"workers": 2},
            "models": [{"name": "m", "engine": "fake", "model": "fake", "replicas": 1}],
        },
        tmp_path,
    )
    try:
        wait_until(
            lambda: len(psutil.Process(gateway.proc.pid).children()) == 3,
            60,
            "two workers and one engine",
        )
        children = psutil.Process(gateway.proc.pid).children()
        worker = next(c.cmdline() for c in children if "llmgw.workers.worker" in c.cmdline())
        run_dir = Path(worker[worker.index("--run-dir") + 1])
        gateway.proc.kill()  # SIGKILL: nothing of llmgw's own runs to stop them
        gateway.proc.wait()
        _, alive = psutil.wait_procs(children, timeout=30)
        assert alive == []
        assert run_dir.is_dir()  # left behind, as docs/workers.md says: cleaned up here
        shutil.rmtree(run_dir)
    finally:
        gateway.stop()
