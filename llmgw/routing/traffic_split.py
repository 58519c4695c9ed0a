"""Weighted traffic split of one served name over several models (canary releases).

A request with a session key lands on the same target every time: the key hashes to a
point in [0, 1) and the targets own consecutive bands of it, in config order, as wide as
their weights. Changing weights moves only the sessions whose point falls in the band
that changed hands (90/10 -> 80/20 moves the sessions in [0.8, 0.9), nobody else).
Requests without a key are spread at random by weight.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Sequence
from itertools import accumulate


class TrafficSplit:
    """``targets``: (model name, weight >= 0), weights summing above 0."""

    def __init__(self, name: str, targets: Sequence[tuple[str, float]],
                 rng: random.Random) -> None:
        self.name = name
        self.models = [model for model, _ in targets]
        total = sum(weight for _, weight in targets)
        # Upper edge of each target's band; a zero-weight target owns an empty band.
        self._edges = [edge / total for edge in accumulate(w for _, w in targets)]
        self._rng = rng

    def pick(self, session_key: str | None) -> str:
        point = _point(session_key) if session_key else self._rng.random()
        index = bisect.bisect_right(self._edges, point)
        return self.models[min(index, len(self.models) - 1)]

    def weights(self) -> dict[str, float]:
        lows = [0.0, *self._edges[:-1]]
        return {m: high - low for m, low, high in zip(self.models, lows, self._edges,
                                                      strict=True)}


def _point(key: str) -> float:
    """A stable point in [0, 1) (not Python's salted hash: every gateway process and
    every restart agrees)."""
    digest = hashlib.blake2b(key.encode(errors="surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64
