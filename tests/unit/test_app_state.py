"""AppState reads like Starlette's State, without an AttributeError behind each read."""

from __future__ import annotations

import pytest

from llmgw.api.app_state import AppState
from llmgw.api.model_first import ModelRoutesFirst


def test_values_set_any_way_read_back_every_way() -> None:
    state = AppState()
    state.dispatcher = "d"
    state["tools"] = "t"
    assert (state.dispatcher, state["dispatcher"], state.tools, state["tools"]) == (
        "d",
        "d",
        "t",
        "t",
    )
    assert vars(state)["dispatcher"] == "d"  # an attribute: no __getattr__ detour
    assert sorted(state) == ["dispatcher", "tools"] and len(state) == 2
    state.dispatcher = "d2"
    assert state.dispatcher == state["dispatcher"] == "d2"


def test_deleted_values_are_gone_both_ways() -> None:
    state = AppState()
    state.peers, state["keys"] = 1, 2
    del state.peers
    del state["keys"]
    assert len(state) == 0
    for name in ("peers", "keys"):
        with pytest.raises(AttributeError):
            getattr(state, name)


def test_the_gateway_app_uses_it() -> None:
    assert isinstance(ModelRoutesFirst().state, AppState)
