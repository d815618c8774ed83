"""POST /v1/moderations, OpenAI-compatible, answered by the moderation guard's local classifier.

`input` is a string or an array of strings (up to MAX_INPUTS); text parts
(`{"type": "text", "text": ...}`) are read as strings, image parts are refused with 400
`unsupported_parameter` (the classifier reads text only). `model` is optional: OpenAI's names
(omni-moderation-latest, text-moderation-latest...) and Keel's own `keel-moderation` all mean
the local classifier, and the answer names `keel-moderation`. Admission (keys, limits) is by
that name too, so a key's `models` list allows it as `keel-moderation`.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec
import orjson
from aiohttp import web
from msgspec import Meta, Struct

from keel.api.auth import principal_of
from keel.api.body import read_json
from keel.api.traced import traced
from keel.errors import InvalidRequest, ModelNotFound, UnsupportedParameter
from keel.guardrails.moderation import moderate
from keel.pipeline import Trace
from keel.pipeline.request import invalid_request

MODEL = "keel-moderation"
ALIASES = frozenset({MODEL, "omni-moderation-latest", "omni-moderation-2024-09-26",
                     "text-moderation-latest", "text-moderation-stable"})
MAX_INPUTS = 2048


class ModerationRequest(Struct):
    # msgspec allows one array type in a union: parts are checked below, by hand.
    input: str | Annotated[list[Any], Meta(min_length=1, max_length=MAX_INPUTS)]
    model: str = MODEL


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/moderations", create_moderation)


def validate_moderation_request(body) -> tuple[str, list[str]]:
    """The model asked for and the texts; InvalidRequest naming the field at fault."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        request = msgspec.convert(body, ModerationRequest)
    except msgspec.ValidationError as exc:
        raise invalid_request(str(exc)) from None
    if request.model not in ALIASES:
        raise ModelNotFound(f"no moderation model named {request.model!r} (models: "
                            f"{', '.join(sorted(ALIASES))})", param="model")
    if isinstance(request.input, str):
        return request.model, [request.input]
    texts = []
    for i, item in enumerate(request.input):
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict) and item.get("type") == "text" and isinstance(
                item.get("text"), str):
            texts.append(item["text"])
        elif isinstance(item, dict) and item.get("type") == "image_url":
            raise UnsupportedParameter("image inputs are not supported: Keel's moderation "
                                       "classifier reads text only", param=f"input[{i}]")
        else:
            raise InvalidRequest(f"input[{i}] must be a string or a text part "
                                 f"({{\"type\": \"text\", \"text\": ...}})", param=f"input[{i}]")
    return request.model, texts


async def create_moderation(request: web.Request) -> web.StreamResponse:
    return await traced(request, "moderations", _moderate)


async def _moderate(request: web.Request, gateway, trace: Trace) -> web.Response:
    body = await read_json(request, gateway.config.server.max_body_bytes)
    if gateway.config.tracing.record_bodies and isinstance(body, dict):
        trace.request = body
    _, texts = validate_moderation_request(body)
    trace.model = MODEL
    limit_headers = await gateway.admit(principal_of(request), trace, MODEL)
    trace.provider = "local"
    results = await moderate(gateway.runtime, texts)
    answer = {
        "id": f"modr-{uuid.uuid4().hex}",
        "model": MODEL,
        "results": [{
            "flagged": r.flagged,
            "categories": r.categories,
            "category_scores": r.scores,
            # What OpenAI sends for text input: each category judged on the text.
            "category_applied_input_types": {c: ["text"] for c in r.categories},
        } for r in results],
    }
    trace.response = {"count": len(results), "flagged": sum(r.flagged for r in results)}
    return web.Response(body=orjson.dumps(answer), content_type="application/json",
                        headers={"x-keel-trace-id": trace.id, "x-keel-provider": "local",
                                 **limit_headers})
