"""Request and token limits of one subject (a key or a model), per gateway instance.

Each per-minute limit is a token bucket that holds up to a minute's allowance and refills
continuously (``rpm`` requests per 60 s), so bursts up to the limit pass and the long-run
rate is the limit: what OpenAI's ``x-ratelimit-*`` headers describe. Concurrency is a plain
count of requests in flight. All times are seconds from the injected clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmgw.config import Limits

MINUTE_S = 60.0


class Bucket:
    """Up to ``capacity`` units, refilled at ``capacity`` per minute. The level may go
    below zero: tokens a request used beyond its estimate are owed, and repaid by
    waiting."""

    __slots__ = ("capacity", "level", "_rate", "_at")

    def __init__(self, capacity: int, now: float) -> None:
        self.capacity = capacity
        self.level = float(capacity)
        self._rate = capacity / MINUTE_S
        self._at = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self._at) * self._rate)
        self._at = now

    def wait_s(self, amount: int) -> float:
        """Seconds until ``amount`` units are there (a request larger than the bucket
        waits for a full one), after ``refill``."""
        need = min(amount, self.capacity)
        return max(0.0, (need - self.level) / self._rate)

    def reset_s(self) -> float:
        """Seconds until the bucket is full again."""
        return max(0.0, (self.capacity - self.level) / self._rate)

    def take(self, amount: float) -> None:
        """Take (or, negative, give back) units; never above capacity."""
        self.level = min(self.capacity, self.level - amount)

    def resized(self, capacity: int, now: float) -> Bucket:
        """This bucket under a new limit (after ``refill``): what was used of the old
        allowance is used of the new one, so a reload never hands out a fresh minute."""
        bucket = Bucket(capacity, now)
        bucket.level = min(capacity, capacity - (self.capacity - self.level))
        return bucket


@dataclass(frozen=True, slots=True)
class Refusal:
    limit: str  # "requests", "tokens" or "concurrency"
    retry_after_s: float


class Quota:
    """One subject's limits and what it has used. One event loop; not thread-safe."""

    def __init__(self, limits: Limits, now: float) -> None:
        self.limits = limits
        self.requests = Bucket(limits.rpm, now) if limits.rpm is not None else None
        self.tokens = Bucket(limits.tpm, now) if limits.tpm is not None else None
        self.in_flight = 0

    def retune(self, limits: Limits, now: float) -> None:
        """New limits (a reload): usage so far counts against them, and requests in flight
        (which settle on this object) stay counted against the concurrency cap."""
        self.refill(now)
        self.requests = _resized(self.requests, limits.rpm, now)
        self.tokens = _resized(self.tokens, limits.tpm, now)
        self.limits = limits

    def refill(self, now: float) -> None:
        for bucket in (self.requests, self.tokens):
            if bucket is not None:
                bucket.refill(now)

    def refusal(self, tokens: int) -> Refusal | None:
        """Why a request estimated at ``tokens`` cannot start now (after ``refill``)."""
        cap = self.limits.max_concurrency
        if cap is not None and self.in_flight >= cap:
            return Refusal("concurrency", 1.0)
        if self.requests is not None and (wait := self.requests.wait_s(1)) > 0:
            return Refusal("requests", wait)
        if self.tokens is not None and (wait := self.tokens.wait_s(tokens)) > 0:
            return Refusal("tokens", wait)
        return None

    def charge(self, tokens: int) -> None:
        self.in_flight += 1
        if self.requests is not None:
            self.requests.take(1)
        if self.tokens is not None:
            self.tokens.take(tokens)

    def settle(self, extra_tokens: int) -> None:
        """The request ended: its slot frees, and the tokens it used beyond (or, negative,
        below) its estimate are taken (or given back)."""
        self.in_flight -= 1
        if self.tokens is not None and extra_tokens:
            self.tokens.take(extra_tokens)


def _resized(bucket: Bucket | None, capacity: int | None, now: float) -> Bucket | None:
    if capacity is None:
        return None
    return Bucket(capacity, now) if bucket is None else bucket.resized(capacity, now)


def rate_headers(quotas: list[Quota]) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for the tightest
    of ``quotas`` in each dimension (after ``refill``); absent where none has a limit."""
    headers: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        buckets = [b for q in quotas if (b := getattr(q, kind)) is not None]
        if not buckets:
            continue
        tight = min(buckets, key=lambda b: b.level)
        headers[f"x-ratelimit-limit-{kind}"] = str(tight.capacity)
        headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(tight.level)))
        headers[f"x-ratelimit-reset-{kind}"] = duration(tight.reset_s())
    return headers


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``1s``, ``6m0s``, ``17ms``."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    whole = math.ceil(seconds)
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"
