"""SGLang's prefill-decode protocol, as SGLang's own router sends it
(sgl-project/sglang ``sgl-router/src/routers/http/pd_router.rs``:
``inject_bootstrap_into_value`` and ``execute_dual_dispatch_internal``; ``pd_types.rs``:
``generate_room_id``).

The same request body goes to a prefill server and a decode server at once, with three
fields added: ``bootstrap_host`` (the prefill server's host), ``bootstrap_port`` (its
``--disaggregation-bootstrap-port``) and ``bootstrap_room`` (a random id in
[0, 2**63 - 1] that pairs the two legs). The decode server connects to the prefill
server's bootstrap port and receives the KV for that room; the client's answer comes
from the decode leg only, and the prefill leg's answer is drained. A request that
generates several sequences (chat ``n > 1``, a batch of completion prompts) gets one
list entry per sequence in each of the three fields.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from llmgw.engines.request_body import encode

_ROOM_MAX = 2**63 - 1


def batch_size(parsed: Mapping[str, Any]) -> int | None:
    """How many sequences the request generates, when more than one (the router's
    ``get_chat_batch_size`` / ``get_completion_batch_size``)."""
    n = parsed.get("n")
    if "messages" in parsed:
        return n if isinstance(n, int) and n > 1 else None
    prompt = parsed.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return len(prompt)
    return None


def with_bootstrap(parsed: Mapping[str, Any], host: str, port: int,
                   rng: random.Random) -> bytes:
    """The body both legs get."""
    body = dict(parsed)
    n = batch_size(parsed)
    if n is None:
        body.update(bootstrap_host=host, bootstrap_port=port,
                    bootstrap_room=rng.randint(0, _ROOM_MAX))
    else:
        body.update(bootstrap_host=[host] * n, bootstrap_port=[port] * n,
                    bootstrap_room=[rng.randint(0, _ROOM_MAX) for _ in range(n)])
    return encode(body)
