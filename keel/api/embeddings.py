"""POST /v1/embeddings, and the embedders as OpenAI Model objects for /v1/models.

`model` names an embedder from keel.yaml (`embedders:`, plus the built-in `minilm`). Vectors go
out as JSON floats (float32, shortest form that reads back exactly) or, with
`encoding_format: base64`, as little-endian float32 bytes, as OpenAI sends them. The trace keeps
a summary of the answer (count and size), never the vectors.
"""

from __future__ import annotations

import base64
import time

import numpy as np
import orjson
from aiohttp import web

from keel.api.auth import principal_of
from keel.api.body import read_json
from keel.api.traced import traced
from keel.embeddings.request import EmbeddingRequest, validate_embedding_request
from keel.embeddings.vectors import shorten
from keel.errors import InvalidRequest
from keel.pipeline import Trace

_STARTED = int(time.time())


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/embeddings", create_embeddings)


def embedding_models(gateway) -> list[dict]:
    """An OpenAI Model object for each configured embedder."""
    return [
        {"id": name, "object": "model", "created": _STARTED, "owned_by": spec.kind}
        for name, spec in gateway.config.embedder_configs().items()
    ]


async def create_embeddings(request: web.Request) -> web.StreamResponse:
    return await traced(request, "embeddings", _embed)


async def _embed(request: web.Request, gateway, trace: Trace) -> web.Response:
    body = await read_json(request, gateway.config.server.max_body_bytes)
    if gateway.config.tracing.record_bodies and isinstance(body, dict):
        trace.request = body
    req = validate_embedding_request(body)
    trace.model = req.model
    limit_headers = await gateway.admit(principal_of(request), trace, req.model)
    embedder = await gateway.runtime.embedder(req.model)
    trace.provider = embedder.kind
    trace.upstream_model = getattr(embedder, "upstream_model", None)
    trace.system_fingerprint = embedder.fingerprint
    result = await embedder.embed(req.texts)
    vectors = _sized(result.vectors, req.dimensions, embedder.dim)
    usage = {"prompt_tokens": result.tokens, "total_tokens": result.tokens}
    trace.record_usage(usage)
    trace.response = {"count": len(vectors), "dim": int(vectors.shape[1]), "usage": usage}
    return web.Response(
        body=_response(req, vectors, usage),
        content_type="application/json",
        headers={"x-keel-trace-id": trace.id, "x-keel-provider": embedder.kind,
                 **limit_headers},
    )


def _sized(vectors: np.ndarray, dimensions: int | None, dim: int) -> np.ndarray:
    if dimensions is None or dimensions == dim:
        return vectors
    if dimensions > dim:
        raise InvalidRequest(
            f"dimensions must be at most {dim} for this model (got {dimensions})",
            param="dimensions",
        )
    return shorten(vectors, dimensions)


def _response(req: EmbeddingRequest, vectors: np.ndarray, usage: dict) -> bytes:
    if req.encoding_format == "base64":
        little = vectors.astype("<f4", copy=False)
        embeddings = [base64.b64encode(row.tobytes()).decode("ascii") for row in little]
    else:
        embeddings = list(vectors)  # orjson writes float32 rows natively, fast and exact
    data = [
        {"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(embeddings)
    ]
    body = {"object": "list", "data": data, "model": req.model, "usage": usage}
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
