"""The Chat Completions request, typed once at the edge with msgspec (fast, precise errors).

Only the types of known fields are checked here; the dict that flows down the pipeline is the
client's own JSON, so parameters Keel does not know yet still reach an OpenAI-compatible upstream.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
import orjson
from msgspec import Meta, Struct

from keel.pipeline.schemas import check_request_schemas
from keel.errors import InvalidRequest

Temperature = Annotated[float, Meta(ge=0, le=2)]
Penalty = Annotated[float, Meta(ge=-2, le=2)]
PositiveInt = Annotated[int, Meta(ge=1)]


class TextPart(Struct, tag_field="type", tag="text"):
    text: str


class ImageURL(Struct):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(Struct, tag_field="type", tag="image_url"):
    image_url: ImageURL


class InputAudio(Struct):
    data: str
    format: str


class AudioPart(Struct, tag_field="type", tag="input_audio"):
    input_audio: InputAudio


class FilePart(Struct, tag_field="type", tag="file"):
    file: dict[str, Any]


class RefusalPart(Struct, tag_field="type", tag="refusal"):
    refusal: str


ContentPart = TextPart | ImagePart | AudioPart | FilePart | RefusalPart


class FunctionCall(Struct):
    name: str
    arguments: str


class ToolCall(Struct):
    id: str
    function: FunctionCall
    type: Literal["function"] = "function"


class SystemMessage(Struct, tag_field="role", tag="system"):
    content: str | list[TextPart]
    name: str | None = None


class DeveloperMessage(Struct, tag_field="role", tag="developer"):
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(Struct, tag_field="role", tag="user"):
    content: str | list[ContentPart]
    name: str | None = None


class AssistantMessage(Struct, tag_field="role", tag="assistant"):
    content: str | list[TextPart | RefusalPart] | None = None
    refusal: str | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None


class ToolMessage(Struct, tag_field="role", tag="tool"):
    content: str | list[TextPart]
    tool_call_id: str


Message = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage


class JSONSchemaFormat(Struct):
    name: Annotated[str, Meta(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class TextFormat(Struct, tag_field="type", tag="text"):
    pass


class JSONObjectFormat(Struct, tag_field="type", tag="json_object"):
    # llama.cpp server's extension (instructor's JSON_SCHEMA mode sends it): a schema here is
    # honoured as a json_schema response_format (`normalise_extensions`).
    schema: dict[str, Any] | None = None


class JSONSchemaResponseFormat(Struct, tag_field="type", tag="json_schema"):
    json_schema: JSONSchemaFormat


class FunctionDef(Struct):
    name: Annotated[str, Meta(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(Struct):
    function: FunctionDef
    type: Literal["function"] = "function"


class NamedFunction(Struct):
    name: str


class NamedToolChoice(Struct):
    function: NamedFunction
    type: Literal["function"] = "function"


class StreamOptions(Struct):
    include_usage: bool | None = None


class ChatCompletionRequest(Struct):
    model: str
    messages: Annotated[list[Message], Meta(min_length=1)]
    temperature: Temperature | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    stop: str | Annotated[list[str], Meta(max_length=4)] | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    seed: int | None = None
    response_format: TextFormat | JSONObjectFormat | JSONSchemaResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    logit_bias: dict[str, float] | None = None
    # vLLM's extra-body fields (docs/json-mode.md): guided_json becomes a json_schema
    # response_format; guided_choice and guided_regex go to remote upstreams untouched.
    guided_json: dict[str, Any] | str | None = None
    guided_choice: list[str] | None = None
    guided_regex: str | None = None


_AT = re.compile(r" - at `\$\.?(.*)`$")
_MISSING = re.compile(r"Object missing required field `([^`]+)`")


def validate_chat_request(body: Any) -> ChatCompletionRequest:
    """Check a decoded JSON body; raise InvalidRequest naming the field at fault."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        request = msgspec.convert(body, ChatCompletionRequest)
    except msgspec.ValidationError as exc:
        raise invalid_request(str(exc)) from None
    if request.stream_options is not None and not request.stream:
        raise InvalidRequest(
            "stream_options is only allowed when stream is true", param="stream_options"
        )
    check_request_schemas(body)  # a 400 naming the field, before anything relies on one
    normalise_extensions(body)
    return request


_ROLES = "system, developer, user, assistant, tool"


def invalid_request(text: str) -> InvalidRequest:
    param = None
    at = _AT.search(text)
    if at:
        param = at.group(1) or None
        text = text[: at.start()]
    missing = _MISSING.match(text)
    if missing:
        field = missing.group(1)
        param = f"{param}.{field}" if param else field
        return InvalidRequest(f"missing required parameter: '{param}'", param=param)
    if param and param.endswith(".role"):
        text += f" (expected one of: {_ROLES})"
    where = f" at '{param}'" if param else ""
    text = text.replace("Invalid value", "invalid value").replace("Expected", "expected")
    return InvalidRequest(f"invalid request{where}: {text}", param=param)


# -- de-facto extensions (docs/json-mode.md) ------------------------------------------------------

EXTENSION_SCHEMA_NAME = "response"


def normalise_extensions(body: dict) -> None:
    """Rewrite, in place, the JSON-schema extensions other servers accept into the one form the
    pipeline reads, a `json_schema` response_format, so the local engine (grammar) and the
    json_mode layer (validate and repair) honour them unchanged:

    - `response_format: {"type": "json_object", "schema": S}` (llama.cpp server, instructor's
      JSON_SCHEMA mode) becomes `{"type": "json_schema", "json_schema": {"name", "schema": S}}`;
    - vLLM's `guided_json: S` (an object, or a string holding one) becomes the same, and leaves
      the body (it may not be combined with a JSON `response_format`).

    `guided_choice` and `guided_regex` are left as they are: remote OpenAI-compatible upstreams
    get them untouched; the local engine refuses them (400 `unsupported_parameter`).
    Call on a body that `validate_chat_request` has accepted.
    """
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_object" and "schema" in fmt:
        schema = fmt["schema"]
        body["response_format"] = (
            _schema_format(schema) if schema is not None else {"type": "json_object"})
    if body.get("guided_json") is None:
        body.pop("guided_json", None)
        return
    schema = body.pop("guided_json")
    if isinstance(schema, str):
        try:
            schema = orjson.loads(schema)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(
                f"guided_json: not valid JSON ({exc})", param="guided_json") from None
        if not isinstance(schema, dict):
            raise InvalidRequest("guided_json: expected a JSON schema object", param="guided_json")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type", "text") != "text":
        raise InvalidRequest(
            "guided_json and a JSON response_format were both given; send one of them",
            param="guided_json",
        )
    body["response_format"] = _schema_format(schema)


def _schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": EXTENSION_SCHEMA_NAME, "schema": schema}}
