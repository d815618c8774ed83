"""Every error Keel raises on purpose, and how each one reaches the user.

    KeelError                      status, OpenAI error type, code, retryable
    ├── ConfigError                a bad keel.yaml: file, field path, what was expected (CLI only)
    ├── InvalidRequest       400   the client's mistake, naming the field (`param`)
    │   ├── UnsupportedParameter   a parameter the chosen provider cannot honour
    │   ├── ModelNotFound    404   unknown public model name
    │   ├── PayloadTooLarge  413   body over `server.max_body_bytes`
    │   └── GuardrailBlocked 400   a guard blocked the request or the answer (`guardrail_blocked`)
    ├── AuthenticationError  401   no API key, or one Keel does not know (revoked, expired)
    ├── PermissionDenied     403   a key used for a model or a surface outside its scopes
    ├── RateLimited          429   a key's or a model's requests/tokens per minute spent
    ├── QuotaExceeded        429   a key's or a team's budget for the period spent
    ├── ServiceUnavailable   503   shared state (Redis) away while limits fail closed
    │   └── GuardrailError   503   a guard failed and fails closed (`guardrail_error`)
    ├── NotFound             404   an unknown route or resource
    ├── UpstreamError        502   the provider failed (5xx, refused connection, bad answer)
    │   ├── GuardrailRepairFailed 502  an answer still failing a repair guard after its attempts
    │   ├── UpstreamRateLimited 429  passes the upstream's Retry-After on
    │   └── UpstreamTimeout     504
    ├── InternalError        500   a bug in Keel: the message names the trace, the log has the rest
    └── ClientClosed         499   the client went away before the answer (traces only: nobody
                                   is left to read it)

Layers derive their own errors from these, next to the code that raises them:

    InvalidRequest ── EmbedderMismatch (409, grounding/knowledge/base.py),
                      JudgePromptTooLong (evals/graders/judge_call.py)
    NotFound ──────── CollectionNotFound (grounding/knowledge/base.py), TraceNotFound
                      (ops/feedback.py), DatasetNotFound (evals/dataset_store.py),
                      RunNotFound (evals/annotate.py)
    KeelError ─────── ToolError (502 `tool_error`, grounding/tools/base.py): inside the tools
                      loop it becomes the tool's result, for the model to read

At the HTTP edge an error becomes `{"error": {"message", "type", "param", "code"}}` with its
status; in the CLI it becomes one clean line. Anything else is a bug and is reported as an
`InternalError` (500) without its stack trace. `keel.api.errors` maps aiohttp's own HTTP errors
(404 unknown URL, 405, 413, ...) to the same shape.
"""

from __future__ import annotations


class KeelError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def to_openai(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class ConfigError(KeelError):
    type = "config_error"


class InvalidRequest(KeelError):
    status = 400
    type = "invalid_request_error"


class UnsupportedParameter(InvalidRequest):
    code = "unsupported_parameter"


class ModelNotFound(InvalidRequest):
    status = 404
    code = "model_not_found"


class PayloadTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class GuardrailBlocked(InvalidRequest):
    """A guard blocked the request (or the answer); the message names the guard."""

    code = "guardrail_blocked"


class AuthenticationError(KeelError):
    """As OpenAI answers a missing or wrong key: 401 `invalid_api_key`."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(KeelError):
    """A valid key asking for what its scopes leave out (a model, a surface)."""

    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class RateLimited(KeelError):
    """A requests- or tokens-per-minute limit reached; `headers` carry `Retry-After`. OpenAI's
    `type` says which limit: "requests" or "tokens"."""

    status = 429
    type = "requests"
    code = "rate_limit_exceeded"
    retryable = True

    def __init__(self, message: str, *, limit_type: str = "requests", **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.type = limit_type


class QuotaExceeded(KeelError):
    """A budget spent for its period: OpenAI's 429 `insufficient_quota` (not worth retrying)."""

    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


class ServiceUnavailable(KeelError):
    status = 503
    type = "server_error"
    code = "service_unavailable"
    retryable = True


class GuardrailError(ServiceUnavailable):
    """A guard failed (a model it asks was down, a bug) and its `on_error` is "closed": the
    request is refused rather than let through unchecked."""

    code = "guardrail_error"


class NotFound(KeelError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class UpstreamError(KeelError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"
    retryable = True


class UpstreamRateLimited(UpstreamError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class GuardrailRepairFailed(UpstreamError):
    """The model's answer still fails a guard whose action is repair, after its attempts."""

    code = "guardrail_repair_failed"
    retryable = False


class InternalError(KeelError):
    """What the client hears of an unexpected exception: the trace id, never the stack."""

    @classmethod
    def for_trace(cls, trace_id: str) -> InternalError:
        return cls(f"Keel failed to handle the request; see trace {trace_id} in its log.")


class ClientClosed(KeelError):
    status = 499  # nginx's convention
    type = "client_closed"
    code = "client_closed"

    def __init__(self, message: str = "the client closed the connection", **kwargs) -> None:
        super().__init__(message, **kwargs)
