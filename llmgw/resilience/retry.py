"""What a failed attempt means, before any byte reached the client: whether the request
may be sent to another replica, and whether the failure counts against the replica.

Never resend a request that may have started generating: a second replica would do the
work twice, and a request that crashed its engine (a "query of death") would crash the
next one too. So:

- connect refused, DNS, connect timeout (UpstreamUnreachable): the request never left;
  always safe.
- an engine 5xx (UpstreamFailed) or an unreadable answer: the engine answered, so it is
  done with the request; safe.
- the connection broke after the request was sent and before the engine's headers
  (UpstreamDisconnected), or a stream's headers did not come in time (FirstByteTimeout):
  for a stream, safe, because engines (vLLM, SGLang, ours) send a stream's headers
  before they schedule it, so a stream without headers has not started generating. For
  a non-streaming request, not safe: its headers come only when generation is done, so
  it may well have been generating (or be what killed the engine); the client gets the
  502 (the OpenAI SDKs retry it themselves, at their own pace).
- the request's own deadline passed (UpstreamTimeout): no time is left to retry.
"""

from __future__ import annotations

from llmgw.errors import (
    FirstByteTimeout,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamFailed,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from llmgw.resilience.outlier import FailureReason


def retryable(error: UpstreamError, stream: bool) -> bool:
    """Whether the failed attempt may be sent to another replica (module docstring)."""
    if isinstance(error, UpstreamDisconnected | FirstByteTimeout):
        return stream
    return not isinstance(error, UpstreamTimeout)


def failure_reason(error: UpstreamError, stream: bool) -> FailureReason | None:
    """What the failure counts as against the replica, or None when it says nothing
    about the replica (a non-streaming request that outlived its deadline was long, not
    necessarily stuck; an adapter slot taken is routine)."""
    if isinstance(error, UpstreamUnreachable):
        return "connect"
    if isinstance(error, UpstreamDisconnected):
        return "reset"
    if isinstance(error, UpstreamFailed):
        return "5xx"
    if isinstance(error, UpstreamTimeout):
        return "timeout" if stream else None
    return None
