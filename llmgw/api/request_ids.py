"""The gateway's own id of each request: it keys routing's per-request state and names
the request to its engine (which aborts by it), so it must be unique among every request
in flight on an engine, whichever gateway process or worker sent it.

A random prefix per process and a counter, not ``os.urandom`` per request (a system call
on every request, bench/overhead.py --profile). Same length and alphabet as before: 24
hex characters.
"""

from __future__ import annotations

import itertools
import os

_COUNTER_SPAN = 1 << 32  # 8 hex digits; wraps after 4 billion requests, long finished


def _reseed() -> None:
    global _prefix, _counter
    _prefix = os.urandom(8).hex()  # 64 random bits: distinct across processes
    _counter = itertools.count()


_prefix = ""
_counter = itertools.count()
_reseed()
# A forked child would otherwise repeat its parent's ids.
os.register_at_fork(after_in_child=_reseed)


def new_request_id() -> str:
    return f"{_prefix}{next(_counter) % _COUNTER_SPAN:08x}"
