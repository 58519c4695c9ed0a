"""A request's headers as the model routes read them.

Starlette's ``Headers.get`` is ``Mapping.get``: it calls ``__getitem__``, which raises
``KeyError`` for a missing name, and catches it; ``in`` builds the list of every name.
The model routes ask for several headers most requests do not send (``x-request-id``,
the multiplexed adapter, a session id, the explain flag), so each request paid for raising
and catching several exceptions (bench/overhead.py --profile: 3.8% of the gateway's CPU in
``_Call.__init__`` alone). Here the first lookup indexes the raw list once (names are
lowercase: servers lowercase them, as ASGI requires) and every lookup is a dict access.
"""

from __future__ import annotations

from typing import TypeVar, overload

from starlette.datastructures import Headers

_D = TypeVar("_D")


class RequestHeaders(Headers):
    """``Headers`` whose ``get`` and ``in`` raise nothing and scan once per request."""

    _index: dict[bytes, bytes] | None = None

    def _indexed(self) -> dict[bytes, bytes]:
        index = self._index
        if index is None:
            # Reversed: where a name repeats, the first value wins, as in ``Headers.get``.
            index = self._index = dict(reversed(self._list))
        return index

    @overload
    def get(self, key: str) -> str | None: ...
    @overload
    def get(self, key: str, default: str | _D) -> str | _D: ...

    def get(self, key: str, default: object = None) -> object:
        value = self._indexed().get(key.lower().encode("latin-1"))
        return default if value is None else value.decode("latin-1")

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower().encode("latin-1") in self._indexed()
