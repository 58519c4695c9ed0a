"""A tool worker as a process spec (``placement.spec.ProcessSpec``): the launcher the
composition root gives the tool set starts it, on this machine or on a Ray node, exactly
as it starts an engine replica.

Every worker requires the gateway's token on its calls (``TOKEN_HEADER``): on a Ray
cluster it listens on its node's address, where anything on the network could reach it.
The token is random per gateway (``new_token``), travels in the worker's environment
(never its argv, which Ray logs) and is compared in constant time by the worker.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from dataclasses import dataclass, field

from llmgw.config import ToolConfig
from llmgw.placement.bundles import process_bundle
from llmgw.placement.spec import Endpoint, ProcessSpec

TOKEN_ENV = "LLMGW_TOOL_TOKEN"
TOKEN_HEADER = "x-llmgw-tool-token"


def new_token() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class ToolWorkerCommand:
    """``python -m llmgw.tools.worker`` serving one instance of ``cfg``'s class."""

    cfg: ToolConfig
    # Where the tool's own calls (llmgw.context) reach the gateway.
    gateway_url: str
    token: str = field(repr=False)
    # The gateway's module search path: the worker imports what the gateway imported.
    python_path: str = field(default_factory=lambda: os.pathsep.join(p for p in sys.path if p))

    def argv(self, at: Endpoint) -> list[str]:
        return [
            sys.executable,
            "-m",
            "llmgw.tools.worker",
            "--host",
            at.host,
            "--port",
            str(at.port),
            "--gateway-url",
            self.gateway_url,
            "--config",
            json.dumps(self.cfg.model_dump(mode="json")),
        ]

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": self.python_path, TOKEN_ENV: self.token}


def tool_worker_spec(cfg: ToolConfig, gateway_url: str, token: str) -> ProcessSpec:
    """One worker of ``cfg``: one bundle of its ``placement:`` (1 CPU unless given)."""
    placement = cfg.placement
    return ProcessSpec(
        cfg.name,
        [process_bundle(placement, placement.gpus or 0.0)],
        cfg.startup_timeout_s,
        ToolWorkerCommand(cfg, gateway_url, token),
    )
