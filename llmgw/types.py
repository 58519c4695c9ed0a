"""Core values passed between layers. Small, frozen and free of I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, NamedTuple

from llmgw.protocol import Endpoint

Role = Literal["mixed", "prefill", "decode"]
Outcome = Literal["ok", "client_error", "upstream_error", "timeout", "cancelled"]


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """An immutable snapshot of one replica, handed to routing policies.

    ``in_flight`` is the gateway's exact count of requests open on the replica;
    ``queue_depth`` and ``kv_usage`` (0..1) are engine-reported and may be stale or absent.
    """

    id: str
    model: str
    role: Role = "mixed"
    healthy: bool = True
    in_flight: int = 0
    queue_depth: int | None = None
    kv_usage: float | None = None
    adapters: frozenset[str] = frozenset()
    max_adapters: int = 0
    kv_capacity_tokens: int | None = None  # engine-reported KV cache size
    # Requests the replica holds: the gateway's exact count plus the engine's queue.
    # Derived once here: every scorer and the load guard read it.
    load: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "load", self.in_flight + (self.queue_depth or 0))


# No headers: the default of RequestContext.headers (read-only, shared).
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class RequestContext(NamedTuple):
    """What routing may know about a request; built once per request in the API layer.

    A named tuple rather than a frozen dataclass: as immutable, and built in one call
    (a frozen dataclass sets each of its eleven fields through ``object.__setattr__``:
    ~4% of a short request's instructions, bench/README.md "Issue 16, step 4")."""

    request_id: str
    model: str
    endpoint: Endpoint
    stream: bool
    adapter: str | None = None
    session_id: str | None = None
    # Normalized prompt text, for prefix-aware scorers. Empty when not needed.
    prompt: str = ""
    # The prompt's token ids as the engine will see them (chat template applied), for
    # the precise prefix scorer. None when not needed or not computable.
    prompt_tokens: Sequence[int] | None = None
    headers: Mapping[str, str] = _NO_HEADERS
    # The API key (by name) the request was admitted under, and its priority class; None
    # and "interactive" without ``auth:``.
    tenant: str | None = None
    priority: Literal["interactive", "batch"] = "interactive"


@dataclass(frozen=True, slots=True)
class ReplicaAddress:
    """Where one replica's engine server listens, as the launcher or the config says."""

    id: str
    url: str
    # The engine's KV cache event publisher (ZMQ, tcp://host:port), when it has one.
    kv_events: str | None = None
    # SGLang prefill servers: the port the decode side fetches KV from (its host is the
    # URL's).
    bootstrap_port: int | None = None


@dataclass(frozen=True, slots=True)
class EngineStats:
    """What an engine reports about itself, scraped by the pool on an interval.

    Every field may be None when the engine does not report it. ``kv_usage`` is 0..1;
    the prefix-cache counters are totals since the engine started (in tokens).
    """

    running: int | None = None
    waiting: int | None = None
    kv_usage: float | None = None
    prefix_cache_hits: float | None = None
    prefix_cache_queries: float | None = None
    # KV cache size in tokens (blocks x block size), for sizing the prefix index.
    kv_capacity_tokens: int | None = None
