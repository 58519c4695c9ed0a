"""Session affinity: keep a conversation on one replica (its KV cache holds the history),
unless that replica is overloaded or gone.

A session stays on the replica its last request went to while that replica's load is
under ``load_factor`` x (the mean + 1); past that it spills, and lives where it spilled.
A new session (or one whose replica left) is placed by rendezvous (highest-random-weight)
hashing: the first replica in its stable order that is under the load bound and holds
fewer live sessions than ``session_factor`` x (live sessions + 1) / replicas. So sessions
spread nearly as evenly as a counter spreads them. Each gateway counts only the sessions
it saw, so several gateways in front of one fleet place some new sessions differently;
a high ``session_factor`` (hash order alone) makes them agree again.

On a LoRA model a session lives per (session, adapter): engines key KV blocks by adapter,
so its history under one adapter is no hit under another. Session affinity then follows
adapter residency: a new session goes to a replica within the bound that holds its adapter,
else to one with a free adapter slot, and only when none is within the bound by the usual
placement (which may evict an adapter). A session whose replica lost its adapter and has no
free slot moves once to a replica within the bound that holds it, rather than evicting
another adapter there.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from llmgw.protocol import content_text
from llmgw.routing.base import Need
from llmgw.routing.lora_affinity import has_free_slot
from llmgw.routing.session_table import SessionTable
from llmgw.types import ReplicaView, RequestContext

# Headers that agent harnesses and SDKs send to name a conversation, in priority order.
SESSION_HEADERS = (
    "x-session-id", "session-id", "x-session", "x-conversation-id", "conversation-id",
    "x-thread-id", "x-claude-code-session-id", "x-client-request-session",
)


# Live sessions remembered per scorer: ~200 bytes each (a digest key, a replica id).
SESSION_CAPACITY = 65536


class SessionParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # A replica takes a session only while its load is below this times the mean (+1).
    load_factor: float = Field(default=1.5, ge=1.0)
    # A new session goes to a replica holding fewer live sessions than this times the
    # fair share ((live sessions + 1) / replicas).
    session_factor: float = Field(default=1.15, ge=1.0)
    # A session without a request for this long stops counting and is placed afresh.
    ttl_s: float = Field(default=600.0, gt=0)
    # Who places a new session: "rendezvous" (this scorer, by hash order and session
    # counts) or "others" (no opinion: the policy's other scorers,
    # e.g. prefix affinity that puts a tenant's sessions where its system prompt is
    # cached); either way the session then stays where it went.
    placement: Literal["rendezvous", "others"] = "rendezvous"


class SessionScorer:
    """Score 1 for the session's replica, 0 for the others; no session, no opinion."""

    type_name: ClassVar[str] = "session"
    Params: ClassVar[type[SessionParams]] = SessionParams
    needs: ClassVar[frozenset[Need]] = frozenset({"session"})

    def __init__(self, params: SessionParams | None = None) -> None:
        self.params = params or SessionParams()
        self._orders = RendezvousCache(8192)
        self._homes = SessionTable(SESSION_CAPACITY, self.params.ttl_s)

    def score(self, ctx: RequestContext, replicas: Sequence[ReplicaView]) -> dict[str, float]:
        if not ctx.session_id or not replicas:
            return {}
        key = table_key(ctx.session_id, ctx.adapter)
        by_id = {r.id: r for r in replicas}
        cap = load_cap(replicas, self.params.load_factor)
        within = [r for r in replicas if r.load < cap]
        tiers = adapter_tiers(ctx.adapter, within)
        home = self._homes.home(key)
        if (home in by_id and by_id[home].load < cap
                and keeps_adapter(ctx.adapter, by_id[home], tiers)):
            return {home: 1.0}
        if self.params.placement == "others":
            # Its home (if any) is over the bound or lost the adapter: any replica fit for
            # the adapter under the bound will do, and the other scorers choose among them.
            fit = next((tier for tier in tiers if tier), None)
            return {r.id: 1.0 for r in fit or within if r.id != home}
        chosen = self._place(key, by_id, within, tiers) or pick_for_session(
            key, replicas, self.params.load_factor, self._orders).id
        self._homes.place(key, chosen)
        return {chosen: 1.0}

    def _place(self, key: str, by_id: Mapping[str, ReplicaView], within: Sequence[ReplicaView],
               tiers: Sequence[Sequence[ReplicaView]]) -> str | None:
        """The first replica in the session's rendezvous order under the load bound:
        holding its adapter, under its fair share of sessions and then whatever its share;
        then with a free slot, likewise; then any under its share. An adapter's second copy
        takes a slot another adapter will need (an eviction later), which costs more than
        the imbalance the load bound allows. None when every replica is over the bound."""
        counts = self._homes.counts()
        live = sum(counts[rid] for rid in by_id)
        fair = self.params.session_factor * (live + 1) / len(by_id)
        order = self._orders.order(key, tuple(by_id))
        passes = [*((tier, by_share) for tier in tiers for by_share in (True, False)),
                  (within, True)]
        for allowed, by_share in passes:
            ids = {r.id for r in allowed}
            chosen = next((rid for rid in order
                           if rid in ids and (not by_share or counts[rid] < fair)), None)
            if chosen is not None:
                return chosen
        return None

    def on_routed(self, ctx: RequestContext, replica_id: str) -> None:
        if ctx.session_id:
            self._homes.put(table_key(ctx.session_id, ctx.adapter), replica_id)

    def forget(self, replica_id: str) -> None:
        """Orders computed over a set that held the replica are never asked for again
        (the set changed): drop them now rather than as the LRU ages them out. Its
        sessions are placed afresh."""
        self._orders.drop(replica_id)
        self._homes.drop(replica_id)


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


def table_key(session_id: str, adapter: str | None) -> str:
    """The session table's key: the session itself, or the session under its adapter."""
    return session_id if adapter is None else f"{session_id}\x00{adapter}"


def adapter_tiers(adapter: str | None,
                  within: Sequence[ReplicaView]) -> tuple[list[ReplicaView], ...]:
    """The replicas under the load bound fit for ``adapter``, best first: those holding
    it, then those with a free slot. None for a base-model request."""
    if adapter is None:
        return ()
    return ([r for r in within if adapter in r.adapters],
            [r for r in within if adapter not in r.adapters and has_free_slot(r)])


def keeps_adapter(adapter: str | None, home: ReplicaView,
                  tiers: Sequence[Sequence[ReplicaView]]) -> bool:
    """Whether a session stays on ``home`` as far as its adapter goes: it holds it, can
    load it into a free slot, or no replica under the bound holds it (a move would load
    it just the same)."""
    return (adapter is None or adapter in home.adapters or has_free_slot(home)
            or not tiers[0])


def load_cap(replicas: Sequence[ReplicaView], load_factor: float) -> int:
    """A replica under this many requests may take (or keep) a session."""
    return math.ceil(load_factor * (sum(r.load for r in replicas) / len(replicas) + 1))


def pick_for_session(key: str, replicas: Sequence[ReplicaView], load_factor: float,
                     cache: RendezvousCache | None = None) -> ReplicaView:
    by_id = {r.id: r for r in replicas}
    cap = load_cap(replicas, load_factor)
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
