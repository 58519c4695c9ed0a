"""When requests are sent: steady, Poisson or bursty arrivals at a mean rate, seeded.

An arrival is an offset in seconds from the replay's start. At each one the replay sends
the next turn of a ready session (``loadgen.Replay``); arrivals do not wait for answers,
as real users do not, so a burst lands on the routers all at once.
"""

from __future__ import annotations

import random

KINDS = ("steady", "poisson", "bursty")
BURST = 8  # requests per burst, sent at once


def schedule(kind: str, count: int, rate: float, seed: int) -> list[float]:
    """``count`` offsets at ``rate`` per second on average: evenly spaced (``steady``),
    exponential gaps (``poisson``) or groups of :data:`BURST` at once, the groups evenly
    spaced (``bursty``)."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0, not {rate}")
    if kind == "steady":
        return [i / rate for i in range(count)]
    if kind == "poisson":
        rng = random.Random(seed)
        offsets, now = [], 0.0
        for _ in range(count):
            offsets.append(now)
            now += rng.expovariate(rate)
        return offsets
    if kind == "bursty":
        return [(i // BURST) * BURST / rate for i in range(count)]
    raise ValueError(f"unknown arrival kind {kind!r}; known: {', '.join(KINDS)}")
