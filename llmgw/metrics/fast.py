"""Updates of prometheus-client children on the request path, without its per-call checks.

``Counter.inc``, ``Gauge.inc`` and ``Histogram.observe`` check on every call that the
child is observable (two Python calls), and ``observe`` finds its bucket with a Python
loop over the bounds. A request updates eight children; these callables go straight to
the child's own value objects (the same ones: the exposition and the multiprocess files
are unchanged) and find the bucket by bisection. The check they skip is done once, when
one is made: only a child (``.labels(...)``) is observable.

In one process (no multiprocess files), a value is a float behind a lock that every
``inc`` takes (about 100 ns of a request's ~200 ns per update). Only the event loop's
thread updates these children, and a reader (the exposition, on any thread) sees the
float before or after an update, never half of one; so these add to the float directly.
With multiprocess files the value's own ``inc`` (the mmap write) is used.

They lean on prometheus-client's attributes (``_value``; ``_sum``, ``_buckets``,
``_upper_bounds``; ``MutexValue``'s float ``_value``); where a version lacks them, the
public method is used instead.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.values import MutexValue

Add = Callable[[float], None]


def _lock_free(value: Any) -> bool:
    """A value in this process only (not a multiprocess file): its float may be added to."""
    return type(value) is MutexValue and isinstance(getattr(value, "_value", None), float)


class _AddToFloat:
    """``MutexValue.inc`` without its lock (see the module docstring)."""

    __slots__ = ("_value",)

    def __init__(self, value: Any) -> None:
        self._value = value

    def __call__(self, amount: float) -> None:
        self._value._value += amount


def adder(child: Counter | Gauge) -> Add:
    """``add(n)``: ``child.inc(n)`` (a gauge takes negative ``n``; a counter never gets
    one here)."""
    child._raise_if_not_observable()  # type: ignore[no-untyped-call]  # once, here
    value = getattr(child, "_value", None)
    if _lock_free(value):
        return _AddToFloat(value)
    inc = getattr(value, "inc", None)
    return inc if callable(inc) else child.inc


class _Observe:
    __slots__ = ("_sum", "_buckets", "_bounds")

    def __init__(self, child: Any) -> None:
        self._sum, self._buckets, self._bounds = child._sum, child._buckets, child._upper_bounds

    def __call__(self, amount: float) -> None:
        self._sum.inc(amount)
        # The first bucket whose bound is >= amount, as observe's loop finds it (the
        # last bound is +Inf).
        self._buckets[bisect_left(self._bounds, amount)].inc(1)


class _ObserveFloats(_Observe):
    """``_Observe`` on values in this process, without their locks."""

    __slots__ = ()

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
    return _Observe(child)
