"""`python -m llmgw.engines.embedded --model PATH|HUB_ID|demo --port N ...`

Loads and warms the model before binding the port, so "listening and /health is
200" means ready.
"""

from __future__ import annotations

import argparse
import logging

import torch
import uvicorn

from llmgw.engines.embedded.loader import load_model
from llmgw.engines.embedded.server import EngineServer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m llmgw.engines.embedded", description=__doc__)
    p.add_argument("--model", required=True, help="model directory, hub id, or 'demo'")
    p.add_argument("--served-model-name", help="name in /v1/models and responses")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch-size", type=int, default=16, help="running sequences cap")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--max-model-len", type=int, help="context window (default: the model's)")
    p.add_argument("--num-threads", type=int, help="torch intra-op threads")
    p.add_argument(
        "--decode",
        default="auto",
        choices=["auto", "batched", "sequential"],
        help="batched: one forward per step for all sequences (auto when the model allows)",
    )
    p.add_argument("--log-level", default="info")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    loaded = load_model(
        args.model,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        max_batch_size=args.max_batch_size,
        batched={"auto": None, "batched": True, "sequential": False}[args.decode],
    )
    server = EngineServer(loaded, args.served_model_name or args.model)
    uvicorn.run(server.app(), host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
