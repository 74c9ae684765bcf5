"""The one error hierarchy of meshfast.

Every error a client can see is a :class:`MeshError`: it knows its HTTP status
and its OpenAI error ``type`` and ``code``, and renders the OpenAI error body
``{"error": {"message", "type", "param", "code"}}``. The server renders these
and nothing else: a client never sees a stack trace.
"""

from __future__ import annotations

import orjson


class MeshError(Exception):
    """Base of every client-visible error."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or []

    def to_dict(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body(self) -> bytes:
        return orjson.dumps(self.to_dict())

    def sse_event(self) -> bytes:
        """The error as one server-sent event, for failures after a stream began."""
        return b"data: " + self.body() + b"\n\n"


class InvalidRequest(MeshError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidJSON(InvalidRequest):
    code = "invalid_json"


class BodyTooLarge(MeshError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class AuthenticationFailed(MeshError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class RouteNotFound(MeshError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(MeshError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class ModelNotFound(MeshError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class UnsupportedOperation(MeshError):
    """The model exists but cannot do what was asked (e.g. chat on an embedding model)."""

    status = 400
    type = "invalid_request_error"
    code = "unsupported_operation"


class ServerDraining(MeshError):
    status = 503
    type = "server_error"
    code = "server_shutting_down"


class InternalError(MeshError):
    status = 500
    type = "server_error"
    code = "internal_error"


class UpstreamUnreachable(MeshError):
    status = 502
    type = "upstream_error"
    code = "upstream_unreachable"


class UpstreamBadResponse(MeshError):
    status = 502
    type = "upstream_error"
    code = "upstream_bad_response"


class UpstreamTimedOut(MeshError):
    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


class UpstreamStreamFailed(MeshError):
    """The upstream failed after the stream had begun; sent as an SSE error event."""

    status = 502
    type = "upstream_error"
    code = "upstream_stream_interrupted"


class UpstreamHTTPError(MeshError):
    """An error answer from the upstream, passed through with its status and body."""

    type = "upstream_error"
    code = "upstream_error"

    def __init__(self, status: int, body: bytes, content_type: bytes | None) -> None:
        super().__init__(f"upstream returned HTTP {status}")
        self.status = status
        self.raw_body = body
        self.content_type = content_type or b"application/json"

    def body(self) -> bytes:
        if self.content_type.startswith(b"application/json") and self.raw_body:
            return self.raw_body
        return super().body()


class ConfigError(Exception):
    """A configuration file or environment variable is wrong (the CLI exits with status 2)."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        super().__init__(f"{source}: {key}: {problem}")
        self.source = source
        self.key = key
        self.problem = problem


class KeyRevoked(AuthenticationFailed):
    code = "key_revoked"


class InsufficientBalance(MeshError):
    status = 402
    type = "insufficient_quota"
    code = "insufficient_balance"


class NotFound(MeshError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class Conflict(MeshError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class StoreUnavailable(MeshError):
    status = 503
    type = "server_error"
    code = "store_unavailable"


class RevocationUnconfirmed(MeshError):
    """A key was revoked in the store, but a live instance did not acknowledge in time."""

    status = 503
    type = "server_error"
    code = "revocation_unconfirmed"


class StaleContext(MeshError):
    """The account or project the call was admitted under changed before its hold was
    placed (a shared store's cache was stale). An internal signal: the pipeline retries
    the call's start once."""

    status = 503
    type = "server_error"
    code = "stale_context"


class RateLimited(MeshError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


class TokensLimited(RateLimited):
    type = "tokens"
    code = "tokens_per_minute_exceeded"


class ConcurrencyLimited(RateLimited):
    code = "concurrency_limit_exceeded"


class MonthlyBudgetExceeded(RateLimited):
    type = "budget"
    code = "monthly_budget_exceeded"


class DailyBudgetExceeded(RateLimited):
    type = "budget"
    code = "daily_budget_exceeded"


class PrivacyUnavailable(MeshError):
    """No endpoint that could serve the request meets the privacy class it asked for.

    Never answered by a lower class: the router refuses instead of downgrading.
    """

    status = 403
    type = "invalid_request_error"
    code = "privacy_class_unavailable"


class NoHealthyEndpoint(MeshError):
    """Every endpoint that could serve the request has its circuit breaker open."""

    status = 503
    type = "upstream_error"
    code = "no_healthy_endpoint"
