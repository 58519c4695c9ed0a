"""Errors a client can see, as one hierarchy. Translated to HTTP only in ``api/errors.py``.

    GatewayError                      500 server_error
    ├── InvalidRequest                400 invalid_request_error
    │   ├── ContextTooLong            400 invalid_request_error / context_length_exceeded
    │   ├── AdapterLoadFailed         400 invalid_request_error / adapter_load_failed
    │   ├── UnsupportedEndpoint       400 invalid_request_error / unsupported_endpoint
    │   ├── PayloadTooLarge           413 invalid_request_error / payload_too_large
    │   └── HeadersTooLarge           431 invalid_request_error / request_header_fields_too_large
    ├── ClientGone                    499 (never sent: the client left; what metrics record)
    ├── ModelNotFound                 404 invalid_request_error / model_not_found
    ├── Overloaded                    429 rate_limit_error / overloaded
    ├── RateLimited                   429 rate_limit_error / rate_limit_exceeded (+ Retry-After)
    ├── NoReplica                     503 server_error / no_healthy_replica (+ Retry-After)
    │   └── Saturated                 503 server_error / model_saturated (+ Retry-After)
    ├── UpstreamError                 502 server_error / upstream_error
    │   ├── UpstreamUnreachable       502 server_error / upstream_unreachable
    │   ├── UpstreamDisconnected      502 server_error / upstream_disconnected
    │   ├── AnswerBroken              502 server_error / upstream_error (after the headers)
    │   ├── UpstreamFailed            502 server_error / upstream_error (the engine's 5xx)
    │   └── UpstreamTimeout           504 server_error / upstream_timeout
    │       ├── FirstByteTimeout      504 server_error / upstream_timeout
    │       └── StreamIdleTimeout     504 server_error / upstream_timeout (mid-stream only)
    ├── UpstreamRejected              4xx passed through from the engine with its message
    ├── Unauthorized                  401 authentication_error / invalid_admin_key
    │   └── InvalidApiKey             401 invalid_request_error / invalid_api_key
    ├── AdminRequestRejected          4xx an admin change that cannot be made (404/409/400)
    ├── ChangeNotSaved                500 server_error / state_not_saved
    ├── ToolNotFound                  404 invalid_request_error / tool_not_found
    ├── ToolDepthExceeded             400 invalid_request_error / tool_depth_exceeded
    ├── ToolError                     500 server_error / tool_error (the tool raised)
    ├── ToolUnavailable               503 server_error / tool_unavailable (+ Retry-After)
    ├── ToolWorkerLost                502 server_error / tool_worker_lost
    └── ToolTimeout                   504 server_error / tool_timeout

The HTTP status is the contract: the ``openai`` SDK picks its exception class from it.
"""

from __future__ import annotations

from typing import Any, ClassVar


class GatewayError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    @property
    def status_code(self) -> int:
        return self.status

    def headers(self) -> dict[str, str]:
        """Response headers the error carries (e.g. Retry-After); none by default."""
        return {}

    def body(self) -> dict[str, Any]:
        """The OpenAI error object: ``{"error": {message, type, param, code}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class ContextTooLong(InvalidRequest):
    code = "context_length_exceeded"


class UnsupportedEndpoint(InvalidRequest):
    """The model's engine does not serve the endpoint (say, /v1/responses on the embedded
    engine). A 400, not a 5xx: the same on every replica, and SDKs retry 5xx answers."""

    code = "unsupported_endpoint"


class AdapterLoadFailed(InvalidRequest):
    """An engine could not load a LoRA adapter (missing files, rank too high, wrong base):
    the same on every replica, so retried neither elsewhere nor in a loop."""

    code = "adapter_load_failed"


class PayloadTooLarge(InvalidRequest):
    status = 413
    code = "payload_too_large"


class HeadersTooLarge(InvalidRequest):
    status = 431
    code = "request_header_fields_too_large"


class ClientGone(GatewayError):
    """The client disconnected before its answer: there is nobody to send one to. Its
    status, 499 (nginx's "client closed request"), is what the metrics record."""

    status = 499
    type = "invalid_request_error"
    code = "client_closed_request"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class Overloaded(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "overloaded"


class RateLimited(GatewayError):
    """A key or model is over one of its limits (requests or tokens per minute, requests
    at once). Carries ``Retry-After`` and OpenAI's ``x-ratelimit-*`` headers."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: int,
                 rate_headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.rate_headers = rate_headers or {}

    def headers(self) -> dict[str, str]:
        return {**self.rate_headers, "retry-after": str(self.retry_after_s)}


class NoReplica(GatewayError):
    status = 503
    code = "no_healthy_replica"
    retry_after_s: ClassVar[int] = 1

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after_s)}


class Saturated(NoReplica):
    """Every replica of the model is at its admission limit and this request was shed
    from the gateway's queue (full, or waited past its timeout)."""

    code = "model_saturated"


class UpstreamError(GatewayError):
    """The engine could not be reached or failed (5xx, reset, bad reply). Retryable
    on another replica as long as nothing was sent to the client yet."""

    status = 502
    code = "upstream_error"


class UpstreamUnreachable(UpstreamError):
    """No connection could be made (refused, DNS, connect timeout): the replica is likely
    down, and the request never reached it, so it is always safe to send elsewhere."""

    code = "upstream_unreachable"


class UpstreamDisconnected(UpstreamError):
    """The connection broke after the request was sent and before the engine's headers:
    the engine may have read it, and may have started on it (llmgw.resilience.retry)."""

    code = "upstream_disconnected"


class AnswerBroken(UpstreamError):
    """An answer broke off after its headers (the connection closed, or the bytes
    stopped being HTTP); it counts against the replica as a reset. A non-streaming
    answer's engine had finished the request (such an answer's headers come only once
    generation is done), so another replica may take it; a stream ends where it broke."""


class UpstreamFailed(UpstreamError):
    """The engine answered 5xx: it is done with the request, having generated nothing
    for the client."""


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class FirstByteTimeout(UpstreamTimeout):
    """A stream's headers did not come within ``timeouts.first_byte_s`` (the request's
    own deadline had time left)."""


class StreamIdleTimeout(UpstreamTimeout):
    """A stream's engine sent nothing for ``timeouts.stream_idle_s`` after its headers:
    the client gets it as an SSE error event, the replica a failure."""


class UpstreamRejected(GatewayError):
    """The engine answered 4xx: its status and message reach the client unchanged."""

    type = "invalid_request_error"

    def __init__(
        self, message: str, *, status: int, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, param=param)
        self._status = status
        self._code = code

    @property
    def status_code(self) -> int:
        return self._status

    def body(self) -> dict[str, Any]:
        body = super().body()
        body["error"]["code"] = self._code
        return body


class Unauthorized(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_admin_key"


class InvalidApiKey(Unauthorized):
    """No API key, or one the gateway does not know (or revoked): as OpenAI answers it."""

    type = "invalid_request_error"
    code = "invalid_api_key"


class AdminRequestRejected(GatewayError):
    """An admin change that cannot be made (unknown name 404, name taken 409, bad source
    400); the status says which."""

    type = "invalid_request_error"

    def __init__(self, message: str, *, status: int, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self._status = status

    @property
    def status_code(self) -> int:
        return self._status


class ChangeNotSaved(GatewayError):
    """A runtime change (admin API) the state file could not keep: it was not made."""

    code = "state_not_saved"


class ToolNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "tool_not_found"


class ToolDepthExceeded(InvalidRequest):
    """Tools called through ``llmgw.context`` nested deeper than ``MAX_DEPTH``."""

    code = "tool_depth_exceeded"


class ToolError(GatewayError):
    """The tool's own code raised (or returned what cannot be JSON). The message is the
    exception's type and text: the tool's author wrote it for its caller (a model reads
    it to correct its call)."""

    code = "tool_error"


class ToolUnavailable(NoReplica):
    """No replica of the tool is healthy, or none had room within the call's timeout."""

    code = "tool_unavailable"


class ToolWorkerLost(GatewayError):
    """The worker process running the call went away (killed, crashed) before answering.
    Never retried: a tool need not be idempotent."""

    status = 502
    code = "tool_worker_lost"


class ToolTimeout(GatewayError):
    """The call took longer than the tool's ``timeout_s`` (it may still run to its end)."""

    status = 504
    code = "tool_timeout"
