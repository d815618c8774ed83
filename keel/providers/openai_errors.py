"""How an OpenAI-compatible upstream's failures become Keel errors.

    upstream answer                      Keel error                    status to the client
    429                                  UpstreamRateLimited           429, Retry-After passed on
    401, 403                             UpstreamError (key rejected)  502: the provider's key,
                                                                       not the client's
    404/405 without an OpenAI error body UpstreamError                 502: base_url looks wrong
    404 model_not_found                  UpstreamError                 502: keel.yaml's `model:`
    408, 504                             UpstreamTimeout               504
    other 4xx (400, 404, 422, ...)       InvalidRequest                the upstream's status, with
                                                                       its message, param, code
    5xx                                  UpstreamError                 502
    connection refused, reset, DNS       UpstreamError                 502, naming base_url
    connect or read timeout              UpstreamTimeout               504
    a body that is not JSON              UpstreamError                 502
"""

from __future__ import annotations

import math
from typing import Mapping

import orjson

from keel.errors import (
    InvalidRequest,
    KeelError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)


def http_error(
    name: str, base_url: str, status: int, raw: bytes, headers: Mapping,
    path: str = "/chat/completions",
) -> KeelError:
    """The Keel error for an upstream answer with an HTTP error `status` and body `raw`."""
    error = _openai_error(raw)
    message = error.get("message") or _snippet(raw) or f"HTTP {status}"
    where = f"provider {name!r} ({base_url})"
    if status == 429:
        retry_after = _retry_after(headers)
        return UpstreamRateLimited(
            f"{where} is rate limiting requests: {message}",
            headers={"Retry-After": retry_after} if retry_after else None,
        )
    if status in (401, 403):
        return UpstreamError(
            f"{where} rejected Keel's API key for it ({status}): {message}; "
            "check the provider's api_key in keel.yaml"
        )
    if status in (404, 405) and not error:
        return UpstreamError(
            f"{where} answered {status} for {path}: check its base_url ({message})"
        )
    if status == 404 and error.get("code") == "model_not_found":
        # The client's public model exists; the upstream name in keel.yaml is what is wrong.
        return UpstreamError(
            f"{where} does not serve the model Keel asked for: {message}; "
            "check the model's `model:` in keel.yaml",
            code="upstream_model_not_found",
        )
    if status in (408, 504):
        return UpstreamTimeout(f"{where} timed out ({status}): {message}")
    if 400 <= status < 500:
        err = InvalidRequest(
            f"{where} refused the request ({status}): {message}",
            param=_str_or_none(error.get("param")),
            code=_str_or_none(error.get("code")),
        )
        err.status = status
        return err
    return UpstreamError(f"{where} failed ({status}): {message}")


def stream_error(name: str, base_url: str, payload: dict) -> KeelError:
    """An `{"error": ...}` event sent in the middle of a stream."""
    error = payload.get("error")
    message = error.get("message") if isinstance(error, dict) else str(error)
    return UpstreamError(f"provider {name!r} ({base_url}) failed mid-stream: {message}")


def _openai_error(raw: bytes) -> dict:
    """The `error` object of an OpenAI-shaped error body, or {} when the body is not one."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(body, dict):
        return {}
    error = body.get("error")
    if isinstance(error, dict):
        return error
    if isinstance(error, str):  # some servers (Ollama, older vLLM) send a bare string
        return {"message": error}
    if isinstance(body.get("detail"), str):  # FastAPI-style servers
        return {"message": body["detail"]}
    if isinstance(body.get("message"), str):
        return {"message": body["message"]}
    return {}


def _retry_after(headers: Mapping) -> str | None:
    value = headers.get("Retry-After")
    if value:
        return value
    millis = headers.get("retry-after-ms")
    try:
        return str(math.ceil(float(millis) / 1000.0)) if millis else None
    except ValueError:
        return None


def _snippet(raw: bytes) -> str:
    text = raw[:200].decode("utf-8", "replace").strip()
    return text + ("…" if len(raw) > 200 else "")


def _str_or_none(value) -> str | None:
    return None if value is None else str(value)
