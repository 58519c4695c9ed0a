"""CPU of llmgw's own Python per model request, in one process and without sockets.

The gateway's real serving stack (uvicorn's protocol as ``llmgw up`` installs it, with
llmgw's wire cycle for the model routes; the app, its routes, routing, metrics) is fed
one raw HTTP request at a time through a recording transport, and every engine's
``send`` answers at once with a fixed completion. What is left is the Python a request
costs, free of the kernel, the load generator and the engine, so that a change of a few
microseconds shows (bench/overhead.py, which measures the whole process beside other
proxies, moves by +-10% between runs on a shared machine).

    python bench/request_cpu.py                       # the default policy, 5 x 5000
    python bench/request_cpu.py --routing least-load --requests 20000
    python bench/request_cpu.py --profile             # cProfile's top functions
    python bench/request_cpu.py --opcodes             # bytecodes run per request, by function
    python bench/request_cpu.py --multiprocess        # metrics as a worker keeps them

Prints the best of 5 passes, in microseconds of process CPU per request, and the same
without the event-loop turns the driver spends per request.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
import uvloop
from uvicorn.config import Config
from uvicorn.server import ServerState

from llmgw.api.app import create_app
from llmgw.api.wire.protocol import serving_protocol
from llmgw.build import Gateway
from llmgw.config import GatewayConfig
from llmgw.metrics import multiprocess
from llmgw.placement.local import attached_addresses

ANSWER = orjson.dumps(
    {
        "id": "x",
        "object": "chat.completion",
        "model": "fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "tok " * 16},
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": 8, "completion_tokens": 16, "total_tokens": 24},
    }
)
BODY = orjson.dumps(
    {
        "model": "fake",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "Say hi to everyone here!"}],
    }
)
# The headers an aiohttp client sends (bench/loadgen.py's load generator).
REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"
    b"Content-Type: application/json\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate\r\n"
    b"User-Agent: Python/3.11 aiohttp/3.14.5\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)
TURNS = 3  # event-loop turns per request: the route's task runs, answers, is reaped


class _Answer:
    """An engine's whole answer, there at once."""

    status = 200

    async def read(self) -> bytes:
        return ANSWER

    async def chunk(self) -> bytes:
        return ANSWER

    def close(self) -> None:
        return None


class _Transport:
    """What the protocol writes to; keeps the last write."""

    def __init__(self) -> None:
        self.last = b""
        self.closing = False

    def write(self, data: bytes) -> None:
        self.last = data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )


def _gateway(routing: str | None) -> Gateway:
    model: dict[str, Any] = {"name": "fake", "engine": "openai", "url": ["http://127.0.0.1:9"]}
    if routing:
        model["routing"] = routing
    config = GatewayConfig.model_validate({"models": [model]})
    gateway = Gateway(config)
    for served in config.models:
        gateway.serve(gateway.add_model(served))
        for address, role in zip(attached_addresses(served), served.replica_roles, strict=True):
            gateway.wire(served.name, address, role, version="", healthy=True)

    async def send(path: str, body: bytes) -> _Answer:
        return _Answer()

    for replica in gateway.dispatcher.groups["fake"].replicas:
        replica.engine.send = send  # type: ignore[method-assign,assignment]
    return gateway


async def _run(args: argparse.Namespace) -> None:
    gateway = _gateway(args.routing)
    app = create_app(gateway)
    protocol_class = serving_protocol(app)
    assert isinstance(protocol_class, type), "uvicorn's protocol is not the one llmgw serves on"
    config = Config(app, http=protocol_class, log_level="warning", access_log=False, lifespan="off")
    config.load()
    protocol = protocol_class(
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    transport = _Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]

    async def one() -> None:
        protocol.data_received(REQUEST)
        for _ in range(TURNS):
            await asyncio.sleep(0)

    for _ in range(300):  # warm: caches, bound metric children, routing state
        await one()
    if not transport.last.startswith(b"HTTP/1.1 200 OK"):
        raise SystemExit(f"the gateway did not answer 200: {transport.last[:300]!r}")
    top: int | str = int(args.top) if args.top.isdigit() else args.top
    if args.opcodes:
        await _count_opcodes(one, args.requests, top if isinstance(top, int) else 40)
        return
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(args.requests):
            await one()
        profile.disable()
        pstats.Stats(profile).sort_stats(args.sort).print_stats(top)
        return
    best = float("inf")
    for _ in range(args.passes):
        started = time.process_time()
        for _ in range(args.requests):
            await one()
        best = min(best, (time.process_time() - started) / args.requests * 1e6)
    started = time.process_time()
    for _ in range(args.requests):
        for _ in range(TURNS):
            await asyncio.sleep(0)
    turns = (time.process_time() - started) / args.requests * 1e6
    print(
        f"routing {args.routing or 'default'}"
        f"{', multiprocess metrics' if args.multiprocess else ''}: {best:.2f} us CPU per request "
        f"({best - turns:.2f} without the driver's loop turns), best of {args.passes} x "
        f"{args.requests}"
    )
    await gateway.close()


async def _count_opcodes(one: Any, requests: int, top: int) -> None:
    """Bytecodes the interpreter runs per request, by function (exact, unlike timings:
    what a change removes shows however noisy the machine is). The trace function is
    the thread's, so every task the loop runs meanwhile is counted (the driver too)."""
    counts: Counter[str] = Counter()

    def per_opcode(frame: FrameType, event: str, arg: object) -> Any:
        if event == "opcode":
            code = frame.f_code
            counts[f"{code.co_filename}:{code.co_firstlineno}({code.co_name})"] += 1
        return per_opcode

    def on_call(frame: FrameType, event: str, arg: object) -> Any:
        frame.f_trace_opcodes = True
        return per_opcode

    sys.settrace(on_call)
    try:
        for _ in range(requests):
            await one()
    finally:
        sys.settrace(None)
    total = sum(counts.values())
    print(f"{total / requests:.0f} bytecodes per request ({requests} requests)")
    for name, count in counts.most_common(top):
        print(f"{count / requests:8.1f}  {name.replace(str(Path.cwd()) + '/', '')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routing", default=None, help="a policy (default: the default)")
    parser.add_argument("--requests", type=int, default=5000, help="per pass")
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="cProfile one pass")
    parser.add_argument("--opcodes", action="store_true",
                        help="count the bytecodes run per request, by function")
    parser.add_argument("--sort", default="tottime", help="with --profile: pstats order")
    parser.add_argument("--top", default="40", help="with --profile: rows, or a regex")
    parser.add_argument("--multiprocess", action="store_true",
                        help="metrics in multiprocess files, as with server.workers > 1")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llmgw-bench-metrics-") as metrics_dir:
        if args.multiprocess:
            multiprocess.enable(metrics_dir)
        uvloop.run(_run(args))


if __name__ == "__main__":
    main()
