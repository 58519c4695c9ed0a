"""Session affinity on LoRA models (issue 15, point 4): a session lives per (session,
adapter); a new one is placed where its adapter is resident, then where a slot is free,
and only when neither is within the load bound by the usual placement; a session whose
replica lost its adapter moves once to a replica that holds it."""

from __future__ import annotations

import random

import pytest

from llmgw.routing.registry import make_policy
from llmgw.routing.session import SessionParams, SessionScorer
from llmgw.types import ReplicaView, RequestContext

SLOTS = 2


def replica(rid: str, *adapters: str, in_flight: int = 0) -> ReplicaView:
    return ReplicaView(id=rid, model="m", in_flight=in_flight, adapters=frozenset(adapters),
                       max_adapters=SLOTS)


def ctx(session: str, adapter: str | None) -> RequestContext:
    return RequestContext(request_id="q", model="m", endpoint="chat", stream=False,
                          session_id=session, adapter=adapter)


def route(scorer: SessionScorer, session: str, adapter: str | None,
          replicas: list[ReplicaView]) -> str:
    """Score, take the scorer's single pick as the policy would, report it routed."""
    scores = scorer.score(ctx(session, adapter), replicas)
    assert len(scores) == 1 and set(scores.values()) == {1.0}
    chosen = next(iter(scores))
    scorer.on_routed(ctx(session, adapter), chosen)
    return chosen


# r0 holds sql, r2 has a free slot, r1 and r3 are full of other adapters.
FLEET = [replica("r0", "sql", "x"), replica("r1", "a", "b"), replica("r2", "c"),
         replica("r3", "d", "e")]


def test_new_sessions_go_where_the_adapter_is_then_to_free_slots_never_evicting() -> None:
    scorer = SessionScorer()
    # The holder whatever its share of sessions while it is under the load bound.
    assert [route(scorer, f"s{i}", "sql", FLEET) for i in range(6)] == ["r0"] * 6
    # Over the bound (its in-flight requests), the free slot; then, under its share, r2.
    hot = [replica("r0", "sql", "x", in_flight=9), *FLEET[1:]]
    assert [route(scorer, f"t{i}", "sql", hot) for i in range(2)] == ["r2", "r2"]
    # A session of an adapter no replica holds takes the free slot over evicting one.
    assert route(scorer, "u", "new", FLEET) == "r2"


def test_with_no_fit_replica_under_the_bound_a_session_is_placed_as_usual() -> None:
    scorer = SessionScorer()
    # The only holder is far over the load bound and no replica has a free slot.
    busy = [replica("r0", "sql", "x", in_flight=20), replica("r1", "a", "b"),
            replica("r2", "c", "f"), replica("r3", "d", "e")]
    chosen = route(scorer, "s", "sql", busy)
    assert chosen != "r0"
    # It then lives there (the residency layer loads the adapter) while within bounds.
    loaded = [r if r.id != chosen else replica(chosen, "sql", "e") for r in busy]
    assert [route(scorer, "s", "sql", loaded) for _ in range(3)] == [chosen] * 3


@pytest.mark.parametrize(("later", "expected"), [
    # Its replica lost the adapter and is full; r1 holds it: move once, then stay.
    ([replica("r0", "a", "b"), replica("r1", "sql", "c")], ["r1", "r1", "r1"]),
    # Its replica lost the adapter but has a free slot: reload it there, keep the KV.
    ([replica("r0", "a"), replica("r1", "sql", "c")], ["r0", "r0", "r0"]),
    # No replica within the bound holds it: moving would load it just the same.
    ([replica("r0", "a", "b"), replica("r1", "sql", "c", in_flight=20)],
     ["r0", "r0", "r0"]),
    # Its replica still holds it, busier than r1 yet within the bound: it stays.
    ([replica("r0", "sql", "b", in_flight=3), replica("r1", "sql", "c")],
     ["r0", "r0", "r0"]),
], ids=["lost-and-full-moves-once", "lost-with-free-slot-stays", "no-holder-in-bound-stays",
        "holds-it-stays"])
def test_a_session_moves_only_when_its_replica_lost_the_adapter_to_a_holder(
        later: list[ReplicaView], expected: list[str]) -> None:
    scorer = SessionScorer()
    assert route(scorer, "s", "sql", [replica("r0", "sql"), replica("r1", "c")]) == "r0"
    assert [route(scorer, "s", "sql", later) for _ in range(3)] == expected


def test_a_session_lives_apart_under_each_adapter_and_as_a_base_model_session() -> None:
    scorer = SessionScorer()
    fleet = [replica("r0", "a"), replica("r1", "b"), replica("r2", "x", "y")]
    assert route(scorer, "s", "a", fleet) == "r0"
    assert route(scorer, "s", "b", fleet) == "r1"
    # Its turns under "a" go back to r0: the entry under "b" did not move it.
    assert route(scorer, "s", "a", fleet) == "r0"
    # The base-model session has its own entry and is placed by the usual rule.
    base = SessionScorer()
    assert route(scorer, "s", None, fleet) == route(base, "s", None, fleet)


def test_others_placement_offers_only_replicas_fit_for_the_adapter() -> None:
    scorer = SessionScorer(SessionParams(placement="others"))
    request = ctx("s", "sql")
    fleet = [replica("r0", "sql", "x"), replica("r1", "sql", "a"), replica("r2", "c"),
             replica("r3", "d", "e")]
    assert scorer.score(request, fleet) == {"r0": 1.0, "r1": 1.0}
    assert scorer.score(request, FLEET[1:]) == {"r2": 1.0}  # no holder: the free slot
    full = [replica("r1", "a", "b"), replica("r3", "d", "e")]
    assert scorer.score(request, full) == {"r1": 1.0, "r3": 1.0}  # neither: any in bound


def test_session_aware_on_a_lora_model_ranks_the_adapters_replica_first() -> None:
    policy = make_policy("session-aware", random.Random(0), lora=True)
    request = ctx("s", "sql")
    ranked = [r.id for r in policy.rank(request, FLEET)]
    assert ranked[0] == "r0"
    policy.on_routed(request, "r0")
    # r0 evicted sql and r3 loaded it: the session follows the adapter.
    later = [replica("r0", "a", "b"), replica("r1", "a", "b"), replica("r2", "c"),
             replica("r3", "sql", "e")]
    assert policy.rank(request, later)[0].id == "r3"
