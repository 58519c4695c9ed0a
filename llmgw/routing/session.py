"""Session affinity: keep a conversation on one replica (its KV cache holds the history),
unless that replica is overloaded or gone.

Rendezvous (highest-random-weight) hashing maps a session to replicas in a stable order:
removing a replica moves only its own sessions, adding one takes about 1/N of them. The
first replica in that order whose load is under ``load_factor`` x the mean wins
("consistent hashing with bounded loads"), so a hot session spills to its second choice
instead of overloading its first.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import orjson
from pydantic import BaseModel, ConfigDict, Field

from llmgw.protocol import content_text
from llmgw.routing.base import Need
from llmgw.types import ReplicaView, RequestContext

# Headers that agent harnesses and SDKs send to name a conversation, in priority order.
SESSION_HEADERS = (
    "x-session-id", "session-id", "x-session", "x-conversation-id", "conversation-id",
    "x-thread-id", "x-claude-code-session-id", "x-client-request-session",
)


class SessionParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # A replica takes a session only while its load is below this times the mean (+1).
    load_factor: float = Field(default=1.5, ge=1.0)


class SessionScorer:
    """Score 1 for the session's replica, 0 for the others; no session, no opinion."""

    type_name: ClassVar[str] = "session"
    Params: ClassVar[type[SessionParams]] = SessionParams
    needs: ClassVar[frozenset[Need]] = frozenset({"session"})

    def __init__(self, params: SessionParams | None = None) -> None:
        self.params = params or SessionParams()
        self._orders = RendezvousCache(8192)

    def score(self, ctx: RequestContext, replicas: Sequence[ReplicaView]) -> dict[str, float]:
        if not ctx.session_id or not replicas:
            return {}
        chosen = pick_for_session(ctx.session_id, replicas, self.params.load_factor,
                                  self._orders)
        return {chosen.id: 1.0}

    def on_routed(self, ctx: RequestContext, replica_id: str) -> None:
        return None

    def forget(self, replica_id: str) -> None:
        """Orders computed over a set that held the replica are never asked for again
        (the set changed): drop them now rather than as the LRU ages them out."""
        self._orders.drop(replica_id)


class RendezvousCache:
    """(session key, replica ids) -> replica ids in rendezvous order, least recently used
    first out. A conversation's turns ask again and again while the replicas stay the
    same; hashing the key against every replica each time would dominate the decision."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._orders: OrderedDict[tuple[str, tuple[str, ...]], tuple[str, ...]] = OrderedDict()

    def order(self, key: str, replica_ids: tuple[str, ...]) -> tuple[str, ...]:
        cache_key = (key, replica_ids)
        order = self._orders.get(cache_key)
        if order is None:
            order = tuple(sorted(replica_ids, key=lambda rid: _weight(key, rid), reverse=True))
            self._orders[cache_key] = order
            if len(self._orders) > self.capacity:
                self._orders.popitem(last=False)
        else:
            self._orders.move_to_end(cache_key)
        return order

    def drop(self, replica_id: str) -> None:
        for cache_key in [k for k in self._orders if replica_id in k[1]]:
            del self._orders[cache_key]


def pick_for_session(key: str, replicas: Sequence[ReplicaView], load_factor: float,
                     cache: RendezvousCache | None = None) -> ReplicaView:
    by_id = {r.id: r for r in replicas}
    cap = math.ceil(load_factor * (sum(r.load for r in replicas) / len(replicas) + 1))
    order = (cache or RendezvousCache(0)).order(key, tuple(by_id))
    return next((by_id[rid] for rid in order if by_id[rid].load < cap), by_id[order[0]])


def _weight(key: str, replica_id: str) -> int:
    # A stable hash (not Python's salted one): every gateway process agrees on the order.
    digest = hashlib.blake2b(f"{key}\x00{replica_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def session_key(headers: Mapping[str, str], body: Mapping[str, Any]) -> str | None:
    """The conversation a request belongs to: a session header, then the OpenAI fields
    ``prompt_cache_key`` and ``user``, then a fingerprint of what stays fixed across an
    agent's turns (system prompt, tool schemas, first user turn). Always a digest of
    fixed size (``<source>:<hex>``): the client chooses how long its key is, and the
    session cache keeps keys. Never raises, whatever the body holds."""
    for name in SESSION_HEADERS:
        value = headers.get(name)
        if value:
            return _digest("h", value.encode("utf-8", "surrogatepass"))
    for field in ("prompt_cache_key", "user"):
        value = body.get(field)
        if isinstance(value, str) and value:
            return _digest(field[0], value.encode("utf-8", "surrogatepass"))
    return _fingerprint(body)


def _digest(source: str, value: bytes) -> str:
    # 128 bits: sessions of different clients never share a key by accident.
    return f"{source}:{hashlib.blake2b(value, digest_size=16).hexdigest()}"


def _fingerprint(body: Mapping[str, Any]) -> str | None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    system = [content_text(m.get("content")) for m in messages
              if isinstance(m, dict) and m.get("role") in ("system", "developer")]
    first_user = next((content_text(m.get("content")) for m in messages
                       if isinstance(m, dict) and m.get("role") == "user"), None)
    try:
        text = orjson.dumps([system, first_user])
        tools = orjson.dumps(body.get("tools"), option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        # Nested deeper than orjson writes (254 levels), or not UTF-8: no fingerprint, and
        # the request is routed as one without a session.
        return None
    return _digest("f", text + tools)
