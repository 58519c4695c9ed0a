"""N simulated OpenAI-compatible engine replicas in one process, one port each.

    python -m bench.fleet_sim.sim_engine --ports 9001,9002 [cost-model flags]
    python -m bench.fleet_sim.sim_engine --base-port 9001 --replicas 8

Each port is an independent replica (own KV cache, queue and counters; see replica.py
for the cost model and tokens.py for the tokenizer stand-in). Routes per port:

* ``POST /v1/chat/completions``, ``POST /v1/completions``: stream or not; ``usage``
  always has ``prompt_tokens_details.cached_tokens`` (the true hit); ``x-sim-*`` headers
  and a ``sim`` field give the simulated queue, lane and prefill times.
* ``GET /metrics``: vLLM's Prometheus names; ``GET /health``; ``GET /v1/models`` (the
  base model, then each resident LoRA adapter with its ``parent``, as vLLM lists them).
* ``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}`` and
  ``POST /v1/unload_lora_adapter`` ``{"lora_name"}``: vLLM's runtime LoRA API. A request
  whose ``model`` is not the base model's name runs under that adapter, loading it first
  when it is not resident (``adapters.py``).
* ``GET /sim/state``: this replica's cache size, hits, queries, load; ``POST /sim/reset``:
  empty its cache and zero its counters.
* Fleet-wide, on any port: ``GET /sim/fleet`` (every replica's state) and
  ``POST /sim/match`` with a request body: each replica's cached tokens for its prompt.

Other GETs answer ``{}``: routers probe engine-specific info paths.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Callable

import orjson

from bench.fleet_sim.generation import adapter_of, serve_generation
from bench.fleet_sim.http_server import Handler, Responder, serve
from bench.fleet_sim.openai_format import error_body
from bench.fleet_sim.replica import CostModel, SimReplica
from bench.fleet_sim.tokens import render_body, token_count
from bench.http11 import Request

log = logging.getLogger("fleet_sim")
_GENERATION = ("/v1/chat/completions", "/v1/completions")
_LORA = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")


def metrics_text(replica: SimReplica, model: str) -> bytes:
    """vLLM v1's metric names; prefix-cache counters are in tokens, as vLLM counts."""
    c, label = replica.counters, f'{{model_name="{model}"}}'
    samples = [
        ("vllm:num_requests_running", "gauge", replica.running),
        ("vllm:num_requests_waiting", "gauge", replica.waiting),
        ("vllm:kv_cache_usage_perc", "gauge", replica.kv_usage()),
        ("vllm:prefix_cache_queries_total", "counter", c.prompt_tokens),
        ("vllm:prefix_cache_hits_total", "counter", c.cached_tokens),
        ("vllm:prompt_tokens_total", "counter", c.prompt_tokens),
        ("vllm:generation_tokens_total", "counter", c.generation_tokens),
    ]
    lines = []
    for name, kind, value in samples:
        lines += [f"# TYPE {name} {kind}", f"{name}{label} {float(value)}"]
    return ("\n".join(lines) + "\n").encode()


class Fleet:
    """The replicas this process serves, by port. Event-loop only."""

    def __init__(self, ports: list[int], cost: CostModel, model: str) -> None:
        self.model = model
        self.replicas = {port: SimReplica(f"sim-{port}", cost) for port in ports}

    def handler(self, port: int) -> Handler:
        replica = self.replicas[port]

        async def handle(request: Request, resp: Responder) -> None:
            await self.route(replica, request, resp)

        return handle

    async def route(self, replica: SimReplica, request: Request, resp: Responder) -> None:
        method, path = request.method, request.path
        if method == b"POST" and path in _GENERATION:
            await serve_generation(replica, self.model, request, resp)
        elif method == b"GET" and path == "/metrics":
            resp.send(200, metrics_text(replica, self.model), "text/plain; version=0.0.4")
        elif method == b"GET" and path == "/v1/models":
            resp.send(200, orjson.dumps({"object": "list", "data": self.models(replica)}))
        elif method == b"POST" and path in _LORA:
            await self.lora(replica, path, request, resp)
        elif method == b"GET" and path == "/sim/state":
            resp.send(200, orjson.dumps(replica.state()))
        elif method == b"POST" and path == "/sim/reset":
            replica.reset()
            resp.send(200, orjson.dumps(replica.state()))
        elif method == b"GET" and path == "/sim/fleet":
            resp.send(200, orjson.dumps({r.name: r.state() for r in self.replicas.values()}))
        elif method == b"POST" and path == "/sim/match":
            self.match(request, resp)
        elif method == b"GET":
            resp.send(200, b"{}")  # /health, and the info paths routers probe
        else:
            resp.send(404, error_body(f"no route {method.decode('latin-1')} {path}"))

    def models(self, replica: SimReplica) -> list[dict[str, object]]:
        base = {"id": self.model, "object": "model", "created": 0, "owned_by": "sim",
                "root": self.model, "parent": None, "max_model_len": 131072}
        return [base, *({**base, "id": name, "root": name, "parent": self.model}
                        for name in replica.adapters.names())]

    async def lora(self, replica: SimReplica, path: str, request: Request,
                   resp: Responder) -> None:
        """vLLM's runtime LoRA API: success answers plain text, a failure OpenAI JSON."""
        try:
            name = orjson.loads(request.body)["lora_name"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            resp.send(400, error_body("body must be JSON with lora_name"))
            return
        if not isinstance(name, str) or not name or name == self.model:
            resp.send(400, error_body("lora_name must name an adapter"))
        elif path == "/v1/load_lora_adapter":
            await replica.load_adapter(name)
            resp.send(200, f"Success: LoRA adapter '{name}' added successfully.".encode(),
                      "text/plain")
        elif replica.adapters.unload(name):
            resp.send(200, f"Success: LoRA adapter '{name}' removed successfully.".encode(),
                      "text/plain")
        else:
            resp.send(404, error_body(f"The lora adapter '{name}' cannot be found."))

    def match(self, request: Request, resp: Responder) -> None:
        """Each replica's true cached tokens for the prompt of a generation body, under
        the adapter its ``model`` names."""
        try:
            body = orjson.loads(request.body)
            prompt = render_body(body)
            adapter = adapter_of(str(body.get("model") or self.model), self.model)
        except (orjson.JSONDecodeError, AttributeError):
            resp.send(400, error_body("body must be a JSON generation request"))
            return
        resp.send(200, orjson.dumps({
            "prompt_tokens": token_count(prompt),
            "cached": {r.name: r.match(prompt, adapter) for r in self.replicas.values()},
            "load": {r.name: r.running + r.waiting for r in self.replicas.values()}}))


async def run(host: str, fleet: Fleet) -> None:
    servers = [await serve(host, port, fleet.handler(port)) for port in fleet.replicas]
    log.warning("fleet_sim: %d replicas on %s", len(servers),
                ",".join(str(p) for p in fleet.replicas))
    await asyncio.gather(*(s.serve_forever() for s in servers))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = CostModel()
    p = argparse.ArgumentParser(description="simulated OpenAI-compatible engine fleet")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--ports", help="comma-separated ports, one replica each")
    p.add_argument("--base-port", type=int, help="with --replicas: consecutive ports")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--model", default="sim", help="the served model name")
    p.add_argument("--prefill-ms-per-token", type=float, default=d.prefill_ms_per_token)
    p.add_argument("--decode-ms-per-token", type=float, default=d.decode_ms_per_token)
    p.add_argument("--max-running", type=int, default=d.max_running)
    p.add_argument("--kv-blocks", type=int, default=d.kv_blocks)
    p.add_argument("--block-tokens", type=int, default=d.block_tokens)
    p.add_argument("--no-cache-generated", action="store_true",
                   help="do not cache the blocks of generated tokens")
    p.add_argument("--max-loras", type=int, default=d.max_loras,
                   help="LoRA adapters resident at once per replica, LRU")
    p.add_argument("--lora-load-ms", type=float, default=d.lora_load_ms,
                   help="accelerator time to load an adapter that is not resident")
    args = p.parse_args(argv)
    if args.ports:
        args.port_list = [int(x) for x in args.ports.split(",") if x]
    elif args.base_port:
        args.port_list = [args.base_port + i for i in range(args.replicas)]
    else:
        p.error("give --ports or --base-port")
    return args


def cost_model(args: argparse.Namespace) -> CostModel:
    return CostModel(args.prefill_ms_per_token, args.decode_ms_per_token, args.max_running,
                     args.kv_blocks, args.block_tokens, not args.no_cache_generated,
                     args.max_loras, args.lora_load_ms)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    fleet = Fleet(args.port_list, cost_model(args), args.model)
    try:
        import uvloop
        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=factory) as r:
        r.run(run(args.host, fleet))


if __name__ == "__main__":
    main()
