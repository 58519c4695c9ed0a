"""A request's headers as the model routes read them.

Starlette's ``Headers.get`` is ``Mapping.get``: it calls ``__getitem__``, which raises
``KeyError`` for a missing name, and catches it. The model routes ask for headers most
requests do not send (``x-request-id``, the multiplexed adapter, a session id), so each
request paid for raising and catching several exceptions (bench/overhead.py --profile:
3.8% of the gateway's CPU in ``_Call.__init__`` alone).
"""

from __future__ import annotations

from typing import TypeVar, overload

from starlette.datastructures import Headers

_D = TypeVar("_D")


class RequestHeaders(Headers):
    """``Headers`` whose ``get`` scans once and raises nothing."""

    @overload
    def get(self, key: str) -> str | None: ...
    @overload
    def get(self, key: str, default: str | _D) -> str | _D: ...

    def get(self, key: str, default: object = None) -> object:
        name = key.lower().encode("latin-1")
        for header, value in self._list:
            if header == name:
                return value.decode("latin-1")
        return default
