"""The Embeddings request (`POST /v1/embeddings`), typed once at the edge with msgspec.

`input` is a string or an array of 1 to 2048 strings. Token arrays (OpenAI also accepts ids of
its own tokenizer) are refused: Keel's embedders tokenise with their own vocabularies, so ids
from another tokenizer cannot be turned back into the text they stand for.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from keel.errors import InvalidRequest, UnsupportedParameter
from keel.pipeline.request import invalid_request

MAX_INPUTS = 2048  # OpenAI's limit per request

# msgspec allows one array type in a union, so token arrays are accepted here and refused
# below with their own message rather than a confusing type error.
Inputs = Annotated[list[str | int | list[int]], Meta(min_length=1, max_length=MAX_INPUTS)]


class EmbeddingRequest(Struct):
    model: str
    input: str | Inputs
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    user: str | None = None

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else self.input


def validate_embedding_request(body) -> EmbeddingRequest:
    """Check a decoded JSON body; raise InvalidRequest naming the field at fault."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        request = msgspec.convert(body, EmbeddingRequest)
    except msgspec.ValidationError as exc:
        raise invalid_request(str(exc)) from None
    if isinstance(request.input, list) and not all(isinstance(t, str) for t in request.input):
        raise UnsupportedParameter(
            "input as token arrays is not supported: Keel's embedders use their own "
            "tokenizers; send the text as a string or an array of strings",
            param="input",
        )
    return request
