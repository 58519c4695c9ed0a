"""One timer for all idle connections of a server (llmgw.api.wire.keep_alive): each closes
``timeout_s`` after it went idle, a connection that got a request meanwhile is left
alone, and the timer follows the oldest deadline."""

from __future__ import annotations

from typing import Any

from llmgw.api.wire.keep_alive import IdleConnections


class _Loop:
    """The two loop methods the tracker uses, on a clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[tuple[float, Any, tuple[Any, ...]]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Any, *args: Any) -> object:
        self.timers.append((when, callback, args))
        return object()

    def fire_until(self, when: float) -> None:
        """Run the timers due by ``when``, in order, as the loop would."""
        self.now = when
        while due := sorted(t for t in self.timers if t[0] <= when):
            self.timers.remove(due[0])
            _, callback, args = due[0]
            callback(*args)


class _Connection:
    def __init__(self, name: str, closed: list[str]) -> None:
        self.name, self._closed = name, closed

    def timeout_keep_alive_handler(self) -> None:
        self._closed.append(self.name)


def test_each_idle_connection_closes_its_timeout_after_its_last_answer() -> None:
    loop, closed = _Loop(), []
    idle = IdleConnections()
    a, b, c = (_Connection(name, closed) for name in "abc")
    idle.idle(a, loop, 5.0)  # type: ignore[arg-type]
    loop.now = 101.0
    idle.idle(b, loop, 5.0)  # type: ignore[arg-type]
    loop.now = 102.0
    idle.idle(c, loop, 5.0)  # type: ignore[arg-type]
    assert [when for when, _, _ in loop.timers] == [105.0]  # one timer, the oldest's
    loop.fire_until(105.5)
    assert closed == ["a"]
    loop.fire_until(107.0)
    assert closed == ["a", "b", "c"]
    assert not idle.deadlines and not loop.timers


def test_a_connection_that_got_a_request_is_left_open_and_goes_idle_anew() -> None:
    loop, closed = _Loop(), []
    idle = IdleConnections()
    a, b = _Connection("a", closed), _Connection("b", closed)
    idle.idle(a, loop, 5.0)  # type: ignore[arg-type]
    idle.idle(b, loop, 5.0)  # type: ignore[arg-type]
    loop.now = 103.0
    idle.deadlines.pop(a)  # a request arrived on a (the protocol's data_received)
    loop.fire_until(105.0)
    assert closed == ["b"]
    idle.idle(a, loop, 5.0)  # type: ignore[arg-type]  # answered at 105: open until 110
    loop.fire_until(109.9)
    assert closed == ["b"]
    loop.fire_until(110.0)
    assert closed == ["b", "a"]


def test_going_idle_again_moves_a_connection_behind_the_others() -> None:
    loop, closed = _Loop(), []
    idle = IdleConnections()
    a, b = _Connection("a", closed), _Connection("b", closed)
    idle.idle(a, loop, 5.0)  # type: ignore[arg-type]
    loop.now = 101.0
    idle.idle(b, loop, 5.0)  # type: ignore[arg-type]
    loop.now = 102.0
    idle.idle(a, loop, 5.0)  # type: ignore[arg-type]  # answered a pipelined request
    assert list(idle.deadlines) == [b, a]  # oldest deadline first
    loop.fire_until(106.0)
    assert closed == ["b"]
    loop.fire_until(107.0)
    assert closed == ["b", "a"]
