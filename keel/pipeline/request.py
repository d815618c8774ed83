"""The Chat Completions request, typed once at the edge with msgspec (fast, precise errors).

Only the types of known fields are checked here; the dict that flows down the pipeline is the
client's own JSON, so parameters Keel does not know yet still reach an OpenAI-compatible upstream.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

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
    pass


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
