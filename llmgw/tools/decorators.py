"""``@llmgw.tool`` marks a method as a tool; ``@llmgw.batch`` batches its calls.

Both only annotate or wrap the function: nothing is registered at import time. The
registry (llmgw.tools.registry) finds marked methods on the class a ``tools:`` entry
names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from llmgw.tools.batching import BatchedMethod

F = TypeVar("F", bound=Callable[..., Any])
# What @llmgw.tool marks: a function, or what @llmgw.batch made of one.
T = TypeVar("T")
_MARK = "__llmgw_tool__"


@dataclass(frozen=True, slots=True)
class ToolMark:
    """What ``@llmgw.tool`` said: the tool's name and description when given (default:
    from the deployment's name and the docstring)."""

    name: str | None = None
    description: str | None = None


@overload
def tool(fn: T, /) -> T: ...
@overload
def tool(*, name: str | None = None, description: str | None = None) -> Callable[[T], T]: ...


def tool(fn: Any = None, /, *, name: str | None = None,
         description: str | None = None) -> Any:
    """Make a method (sync or async, or ``@llmgw.batch``-ed) a tool. Its parameters'
    type hints are the tool's JSON Schema, its docstring's first paragraph the tool's
    description. Use bare (``@llmgw.tool``) or with a ``name`` / ``description``."""

    def mark(target: Any) -> Any:
        setattr(target, _MARK, ToolMark(name, description))
        return target

    return mark(fn) if fn is not None else mark


def tool_mark(member: object) -> ToolMark | None:
    mark = getattr(member, _MARK, None)
    return mark if isinstance(mark, ToolMark) else None


@overload
def batch(fn: F, /) -> BatchedMethod: ...
@overload
def batch(*, max_batch_size: int = 8,
          batch_wait_timeout_s: float = 0.01) -> Callable[[F], BatchedMethod]: ...


def batch(fn: Any = None, /, *, max_batch_size: int = 8,
          batch_wait_timeout_s: float = 0.01) -> Any:
    """Ray Serve's ``@serve.batch``: the method takes a list and returns a list of the
    same length; callers call it with one item and get their own result. Calls wait up to
    ``batch_wait_timeout_s`` after the first of a batch, or until ``max_batch_size``
    arrived. An exception fails every call of its batch. Per instance, at run time:
    ``self.method.set_max_batch_size(n)`` and ``.set_batch_wait_timeout_s(t)``."""
    if max_batch_size < 1 or batch_wait_timeout_s < 0:
        raise ValueError("max_batch_size must be >= 1 and batch_wait_timeout_s >= 0")

    def wrap(target: Any) -> BatchedMethod:
        return BatchedMethod(target, max_batch_size, batch_wait_timeout_s)

    return wrap(fn) if fn is not None else wrap
