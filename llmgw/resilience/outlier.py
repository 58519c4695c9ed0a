"""Passive outlier ejection of one replica, after Envoy's outlier detection.

Requests are the probes: ``consecutive_failures`` failures in a row (connect errors,
resets, engine 5xx, streams' timeouts to the first byte, streams cut or silent mid-way)
eject the replica for
``base_ejection_s`` x its number of ejections, at most ``max_ejection_s``. When that time
is up it is half-open: it takes one trial request at a time, and the trial's answer (or a
good health check) closes it, while a failure ejects it again for longer. The multiplier
forgets old ejections once the replica stayed in for ``max_ejection_s``.

    in --N failures--> ejected --time up--> half_open --answer / good check--> in
                          ^                     |
                          +------failure--------+
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from llmgw.config.resilience import OutlierConfig

OutlierState = Literal["in", "ejected", "half_open"]
# What tipped a replica out; the label of llmgw_replica_ejections.
FailureReason = Literal["connect", "reset", "5xx", "timeout"]


class Outlier:
    """One replica's failure streak and ejection. Owned by its Replica; event loop only.
    ``clock`` is in seconds and monotonic."""

    __slots__ = ("config", "_clock", "_state", "failures", "ejections", "_until",
                 "_restored_at", "_trial")

    def __init__(self, config: OutlierConfig | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or OutlierConfig()
        self._clock = clock
        self._state: OutlierState = "in"
        self.failures = 0  # consecutive, since the last answer
        self.ejections = 0  # the backoff multiplier
        self._until = 0.0
        self._restored_at: float | None = None
        self._trial = False  # a half-open replica's one request is under way

    def configure(self, config: OutlierConfig,
                  clock: Callable[[], float] | None = None) -> None:
        """New settings (a reload): they apply from the next failure on."""
        self.config = config
        if clock is not None:
            self._clock = clock

    @property
    def state(self) -> OutlierState:
        if self._state == "ejected" and self._clock() >= self._until:
            self._state = "half_open"
        return self._state

    def admits(self) -> bool:
        """Whether a request may be routed here now, as far as outliers go."""
        state = self.state
        return state == "in" or (state == "half_open" and not self._trial)

    def routed(self) -> None:
        """A request was sent here: on a half-open replica it is the trial."""
        if self.state == "half_open":
            self._trial = True

    def released(self) -> None:
        """The request ended; a trial that ended without a verdict (client gone) lets the
        next request try."""
        self._trial = False

    def answered(self) -> bool:
        """The engine answered (any status below 500): the streak ends. True when this
        closed a half-open replica."""
        self.failures = 0
        return self._close()

    def probe_ok(self) -> bool:
        """A good health check: closes a half-open replica (one with no traffic would
        otherwise stay half-open); no effect on one still ejected."""
        return self._close()

    def failed(self) -> bool:
        """One failure; True when it calls for an ejection (the caller checks the cap)."""
        self.failures += 1
        state = self.state
        return state == "half_open" or (
            state == "in" and self.failures >= self.config.consecutive_failures)

    def eject(self) -> float:
        """Take the replica out; returns for how many seconds."""
        now = self._clock()
        if self._restored_at is not None and \
                now - self._restored_at >= self.config.max_ejection_s:
            self.ejections = 0  # it behaved for a whole max_ejection_s: start over
        self.ejections += 1
        seconds = min(self.config.base_ejection_s * self.ejections,
                      self.config.max_ejection_s)
        self._state, self._until, self._trial, self.failures = "ejected", now + seconds, \
            False, 0
        return seconds

    def ejected_for_s(self) -> float:
        """Seconds until an ejected replica turns half-open; 0 when not ejected."""
        return max(0.0, self._until - self._clock()) if self.state == "ejected" else 0.0

    def status(self) -> dict[str, Any]:
        """For /admin/status."""
        state = self.state
        left = round(self.ejected_for_s(), 1) if state == "ejected" else 0
        return {"state": state, "ejections": self.ejections, "failures": self.failures,
                "ejected_for_s": left}

    def _close(self) -> bool:
        if self.state != "half_open":
            return False
        self._state, self._trial, self._restored_at = "in", False, self._clock()
        return True


def may_eject(outliers: Sequence[Outlier], max_ejected_percent: int) -> bool:
    """Whether one more of a model's replicas may be ejected: at most
    ``max_ejected_percent`` of them out at once, rounded down, so a model's only
    replica is never ejected and a fleet never ejects itself empty on a shared fault."""
    out = sum(o.state == "ejected" for o in outliers)
    return (out + 1) * 100 <= max_ejected_percent * len(outliers)
