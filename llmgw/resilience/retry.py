"""What a failed attempt means, before any byte reached the client: whether the request
may be sent to another replica, and whether the failure counts against the replica.

Never resend a request that may have started generating: a second replica would do the
work twice, and a request that crashed its engine (a "query of death") would crash the
next one too. So:

- connect refused, DNS, connect timeout (UpstreamUnreachable): the request never left;
  always safe.
- an engine 5xx (UpstreamFailed), or a non-streaming answer that broke off after its
  headers (AnswerBroken: the engine died while sending it, or sent bytes that are not
  HTTP): the engine answered, so it is done with the request; safe. The dispatcher reads
  a non-streaming answer's body within the attempt for this: an engine lost between its
  headers and its last byte costs the client nothing.
- the connection broke after the request was sent and before the engine's headers
  (UpstreamDisconnected), or a stream's headers did not come in time (FirstByteTimeout):
  for a stream, safe, because engines (vLLM, SGLang, ours) send a stream's headers
  before they schedule it, so a stream without headers has not started generating. For
  a non-streaming request, not safe while its engine lives: its headers come only when
  generation is done, so it may still be generating; the client gets the 502 (the OpenAI
  SDKs retry it themselves, at their own pace). Unless the engine is gone (its health
  route refuses connections: killed, its node lost): then nothing is generating it any
  more, and it is sent once more elsewhere (``max_attempts`` bounds it, so a request
  that kills engines takes down at most that many).
- the request's own deadline passed (UpstreamTimeout): no time is left to retry.
"""

from __future__ import annotations

from llmgw.errors import (
    AnswerBroken,
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
    if isinstance(error, UpstreamDisconnected | AnswerBroken):
        return "reset"
    if isinstance(error, UpstreamFailed):
        return "5xx"
    if isinstance(error, UpstreamTimeout):
        return "timeout" if stream else None
    return None
