"""`python -m llmgw.engines.embedded --model PATH|HUB_ID|demo --port N ...`

Loads and warms the model (and the `--lora-modules` adapters) before binding the
port, so "listening and /health is 200" means ready. The LoRA flags are vLLM's.
"""

from __future__ import annotations

import argparse
import json
import logging

import torch
import uvicorn

from llmgw.engines.embedded.adapters import LoRAOptions
from llmgw.engines.embedded.loader import load_model
from llmgw.engines.embedded.server import DEFAULT_MAX_BODY_BYTES, EngineServer, RequestOptions


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
    p.add_argument("--enable-lora", action="store_true", help="serve LoRA adapters")
    p.add_argument("--max-loras", type=int, default=4, help="adapters loaded at once")
    p.add_argument("--max-lora-rank", type=int, default=16, help="largest adapter rank")
    p.add_argument(
        "--lora-modules",
        nargs="+",
        default=[],
        metavar="NAME=PATH",
        help='adapters loaded at start: name=path or \'{"name": ..., "path": ...}\'; '
        "implies --enable-lora",
    )
    p.add_argument(
        "--trust-request-chat-template",
        action="store_true",
        help="run chat templates sent in requests (vLLM's flag); refused with 400 otherwise",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="larger request bodies are refused with 413",
    )
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    try:
        args.lora = lora_options(args)
    except ValueError as exc:
        p.error(str(exc))
    return args


def lora_options(args: argparse.Namespace) -> LoRAOptions | None:
    """None unless LoRA is enabled; ValueError names a bad flag value."""
    if not (args.enable_lora or args.lora_modules):
        return None
    if args.max_loras < 1 or args.max_lora_rank < 1:
        raise ValueError("--max-loras and --max-lora-rank must be at least 1")
    modules = tuple(_lora_module(spec) for spec in args.lora_modules)
    if len(modules) > args.max_loras:
        raise ValueError(f"{len(modules)} --lora-modules but --max-loras {args.max_loras}")
    return LoRAOptions(args.max_loras, args.max_lora_rank, modules)


def _lora_module(spec: str) -> tuple[str, str]:
    if spec.lstrip().startswith("{"):  # vLLM's JSON form; base_model_name is ignored
        try:
            item = json.loads(spec)
            return str(item["name"]), str(item["path"])
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"--lora-modules: bad JSON entry {spec!r}") from None
    name, sep, path = spec.partition("=")
    if not (sep and name and path):
        raise ValueError(f"--lora-modules: expected name=path, got {spec!r}")
    return name, path


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
        lora=args.lora,
    )
    options = RequestOptions(args.trust_request_chat_template, args.max_body_bytes)
    server = EngineServer(loaded, args.served_model_name or args.model, args.lora, options)
    uvicorn.run(server.app(), host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
