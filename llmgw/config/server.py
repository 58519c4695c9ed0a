"""The ``server:`` and ``health:`` sections: the gateway process itself."""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import Field, field_validator

from llmgw.config.base import _Strict
from llmgw.config.bounds import RequestBounds
from llmgw.config.resilience import OutlierConfig


class TLSConfig(_Strict):
    """Serve HTTPS with this certificate (chain, PEM) and its private key (PEM), for
    deployments without a terminating proxy. Read at start: a change needs a restart."""

    cert: str = Field(min_length=1)
    key: str = Field(min_length=1)


class AccessLogConfig(_Strict):
    """One JSON line per request (llmgw/telemetry/access_log.py): ids, model, replica,
    status, tokens, timings. Never a body, a prompt or a key. Read at start: a reload
    that changes it is refused."""

    enabled: bool = False
    # A file appended to (created if missing); null: standard error.
    path: str | None = Field(default=None, min_length=1)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # Bodies above this are refused with 413 before they are parsed.
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    # On SIGTERM / Ctrl-C: stop accepting, let open requests finish for this long (seconds,
    # fractions too), then cut those still open; 0 cuts them at once.
    drain_timeout_s: float = Field(default=30.0, ge=0)
    # How long an idle client connection stays open. Above the 5 s that HTTP client pools
    # (httpx, so the OpenAI SDKs; aiohttp) keep an idle connection: a server that closes
    # first races the client reusing it, and that request fails with a reset it never
    # caused (uvicorn's default is 5 s). 75 s is nginx's default.
    keep_alive_s: float = Field(default=75.0, gt=0)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    # Gateway processes serving this port (SO_REUSEPORT, Linux); "auto": one per core. 1 is
    # one process, as ever; more adds a supervisor that owns the engines (docs/workers.md).
    workers: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = 1
    # Key for the admin API (/admin/...), sent as `Authorization: Bearer KEY`; the
    # environment variable LLMGW_ADMIN_KEY overrides it. Unset: the admin API refuses all.
    # Never empty or blank (a templated secret left unset must not open the API).
    admin_key: str | None = None
    # Where runtime changes (adapters and API keys made through the admin API) are kept, so a
    # restart or config reload keeps them.
    state_dir: str = "~/.local/state/llmgw"
    # HTTPS instead of HTTP (null: plain HTTP, e.g. behind a terminating proxy).
    tls: TLSConfig | None = None
    # Per request: n, max_tokens and message count (400 beyond them).
    request_bounds: RequestBounds = RequestBounds()
    # Off by default: {enabled: true} writes to standard error, {enabled: true, path: F} to F.
    access_log: AccessLogConfig = AccessLogConfig()

    @property
    def worker_count(self) -> int:
        """``workers`` as a number: "auto" is this machine's cores."""
        return self.workers if isinstance(self.workers, int) else max(1, os.cpu_count() or 1)

    @field_validator("admin_key")
    @classmethod
    def _key_is_not_blank(cls, value: str | None) -> str | None:
        # A templated config whose secret is unset renders "": refuse it rather than guess
        # whether the operator meant "disabled" or forgot the key.
        if value is not None and not value.strip():
            raise ValueError("must not be empty or blank (leave it out to disable the admin "
                             "API)")
        return value


class HealthConfig(_Strict):
    interval_s: float = Field(default=2.0, gt=0)
    timeout_s: float = Field(default=2.0, gt=0)
    # How often engines' own metrics (queue, KV usage, prefix cache) are scraped.
    stats_interval_s: float = Field(default=1.0, gt=0)
    # A refused connection or an error answer takes a replica out at once; checks that
    # only time out must fail this many times in a row (a live engine busy with a huge
    # prompt answers late without being down).
    failure_threshold: int = Field(default=3, ge=1, le=100)
    # Passive outlier ejection from requests' own failures (README, "Resilience").
    outlier: OutlierConfig = OutlierConfig()
