"""Updates of prometheus-client children on the request path, without its per-call checks.

``Counter.inc``, ``Gauge.inc`` and ``Histogram.observe`` check on every call that the
child is observable (two Python calls), and ``observe`` finds its bucket with a Python
loop over the bounds. A request updates eight children; these callables go straight to
the child's own value objects (the same ones: the exposition and the multiprocess files
are unchanged) and find the bucket by bisection. The check they skip is done once, when
one is made: only a child (``.labels(...)``) is observable.

In one process, a value is a float behind a lock that every ``inc`` takes (about 100 ns
of a request's ~200 ns per update). Only the event loop's thread updates these children,
and a reader (the exposition, on any thread) sees the float before or after an update,
never half of one; so these add to the float directly. With multiprocess files
(``server.workers`` above 1) a value's ``inc`` also takes a lock and checks for a fork
before writing its file (~500 ns); these write the value into the file's mapping
directly, and fall back to ``inc`` in a forked child, whose files the value then
reopens.

They lean on prometheus-client's attributes (``_value``; ``_sum``, ``_buckets``,
``_upper_bounds``; ``MutexValue``'s float ``_value``; a multiprocess value's ``_file``,
``_key``, and its file's ``write_value``, ``_m`` and ``_positions``); where a version
lacks them, the public method is used instead.
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.values import MutexValue

from llmgw.metrics.multiprocess import this_process

Add = Callable[[float], None]

# A multiprocess file's value and timestamp, as prometheus-client's files hold them.
_two_doubles = struct.Struct("dd").pack


def _lock_free(value: Any) -> bool:
    """A value in this process only (not a multiprocess file): its float may be added to."""
    return type(value) is MutexValue and isinstance(getattr(value, "_value", None), float)


def _file_backed(value: Any) -> bool:
    """A multiprocess value whose file may be written directly."""
    file = getattr(value, "_file", None)
    return (
        getattr(value, "_multiprocess", False)
        and isinstance(getattr(value, "_value", None), float)
        and hasattr(value, "_key")
        and callable(getattr(file, "write_value", None))
        and hasattr(file, "_m")
        and isinstance(getattr(file, "_positions", None), dict)
    )


class _AddToFloat:
    """``MutexValue.inc`` without its lock (see the module docstring)."""

    __slots__ = ("_value",)

    def __init__(self, value: Any) -> None:
        self._value = value

    def __call__(self, amount: float) -> None:
        self._value._value += amount


class _AddToFile:
    """A multiprocess value's ``inc`` without its lock and its fork check, in the process
    that made it (see the module docstring). The new value goes straight into the file's
    mapping at the value's place, as the file's ``write_value`` puts it there (one
    16-byte slice assignment, never a partial write), without that method's two Python
    calls; through ``write_value`` the first time and whenever the file has grown (it is
    then mapped anew)."""

    __slots__ = ("_value", "_file", "_key", "_pid", "_mapping", "_at")

    def __init__(self, value: Any) -> None:
        self._value, self._file, self._key = value, value._file, value._key
        self._pid = this_process.id
        self._mapping: Any = None  # the file's mapping where the value sits at ``_at``
        self._at = 0

    def __call__(self, amount: float) -> None:
        value = self._value
        if this_process.id != self._pid:  # forked: the value reopens its files
            value.inc(amount)
            return
        total = value._value = value._value + amount
        value._timestamp = 0.0
        mapping = self._file._m
        if mapping is self._mapping:
            at = self._at
            mapping[at:at + 16] = _two_doubles(total, 0.0)
            return
        self._file.write_value(self._key, total, 0.0)
        self._mapping, self._at = self._file._m, self._file._positions[self._key]


def _add_to(value: Any) -> Add | None:
    """The cheapest ``inc`` of a value object, or None if it has none."""
    if _lock_free(value):
        return _AddToFloat(value)
    if _file_backed(value):
        return _AddToFile(value)
    inc = getattr(value, "inc", None)
    return inc if callable(inc) else None


def adder(child: Counter | Gauge) -> Add:
    """``add(n)``: ``child.inc(n)`` (a gauge takes negative ``n``; a counter never gets
    one here)."""
    child._raise_if_not_observable()  # type: ignore[no-untyped-call]  # once, here
    return _add_to(getattr(child, "_value", None)) or child.inc


class _Observe:
    __slots__ = ("_add_sum", "_bucket_adds", "_bounds")

    def __init__(self, add_sum: Add, bucket_adds: list[Add], bounds: list[float]) -> None:
        self._add_sum, self._bucket_adds, self._bounds = add_sum, bucket_adds, bounds

    def __call__(self, amount: float) -> None:
        self._add_sum(amount)
        # The first bucket whose bound is >= amount, as observe's loop finds it (the
        # last bound is +Inf).
        self._bucket_adds[bisect_left(self._bounds, amount)](1)


class _ObserveFloats:
    """``_Observe`` on values in this process: the floats added to in place."""

    __slots__ = ("_sum", "_buckets", "_bounds")

    def __init__(self, child: Any) -> None:
        self._sum, self._buckets, self._bounds = child._sum, child._buckets, child._upper_bounds

    def __call__(self, amount: float) -> None:
        self._sum._value += amount
        self._buckets[bisect_left(self._bounds, amount)]._value += 1


def observer(child: Histogram) -> Add:
    """``observe(x)``: ``child.observe(x)``."""
    child._raise_if_not_observable()  # type: ignore[no-untyped-call]
    if not all(hasattr(child, name) for name in ("_sum", "_buckets", "_upper_bounds")):
        return child.observe
    if all(_lock_free(value) for value in (child._sum, *child._buckets)):
        return _ObserveFloats(child)
    add_sum = _add_to(child._sum)
    bucket_adds = [_add_to(bucket) for bucket in child._buckets]
    if add_sum is None or None in bucket_adds:
        return child.observe
    return _Observe(add_sum, bucket_adds, child._upper_bounds)  # type: ignore[arg-type]
