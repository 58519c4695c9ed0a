"""``app.state`` whose reads are plain attribute lookups.

Starlette's ``State`` keeps its values in a dict behind ``__getattr__``, which Python calls
only after the normal lookup failed: every read of ``app.state.dispatcher`` first built
and caught an ``AttributeError`` with a formatted message. The model routes read the
app's collaborators six times a request (callgrind: 2% of the gateway's instructions in
formatting those messages alone).
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import State


class AppState(State):
    """``State`` that also keeps each value as an instance attribute (the dict stays the
    source for iteration, ``[]`` and copies)."""

    def __setattr__(self, key: Any, value: Any) -> None:
        super().__setattr__(key, value)
        object.__setattr__(self, key, value)

    def __delattr__(self, key: Any) -> None:
        super().__delattr__(key)
        object.__delattr__(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        self.__setattr__(key, value)

    def __delitem__(self, key: str) -> None:
        self.__delattr__(key)
