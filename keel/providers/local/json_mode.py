"""JSON mode on the embedded engine: compact grammars and the token budget.

A GBNF grammar constrains decoding, so the model can only write JSON (valid against the schema
when one is given). Grammars here allow no free whitespace: every token goes to content.

A grammar alone cannot stop a looping answer from running into `max_tokens` and leaving JSON
cut in half. So the decoder keeps a *reserve*: `JsonBudget.must_close()` says when the tokens
left only just cover closing what is open (plus, for a schema, the cheapest valid remainder),
and from then on decoding switches to *closing mode*: greedy, still under the grammar, with a
strong bias towards tokens that close strings, arrays and objects (`closing_bias`). The grammar
keeps closing mode honest: a required key or a `minLength` is still written. Only if even that
does not fit does the provider raise `json_budget_exceeded`.

An answer that closing mode changed (the decoder compares each closing token with the model's
own pick) ends with `finish_reason: "length"`: valid JSON, but its values were cut short.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

# The top level of `json_object` is an object, as OpenAI's JSON mode promises. Numbers are
# bounded so a digit loop cannot eat the budget.
JSON_OBJECT_GBNF = r"""
root ::= object
value ::= object | array | string | number | "true" | "false" | "null"
object ::= "{" ( member ( "," member )* )? "}"
member ::= string ":" value
array ::= "[" ( value ( "," value )* )? "]"
string ::= "\"" char* "\""
char ::= [^"\\\x7F\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} )
number ::= "-"? ( "0" | [1-9] [0-9]{0,15} ) ( "." [0-9]{1,15} )? ( [eE] [-+]? [0-9]{1,3} )?
"""

_SPACE_RULE = re.compile(r"^space ::= .*$", re.MULTILINE)
# The converter lets raw control characters into strings, which strict JSON parsers reject.
_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_STRICT_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'


def schema_gbnf(schema: dict, prop_order: list[str] | None = None) -> str:
    """llama.cpp's schema converter, with its optional spaces removed (compact output)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    grammar = json_schema_to_gbnf(json.dumps(schema), prop_order)
    grammar = grammar.replace(_LOOSE_CHAR, _STRICT_CHAR)
    return _SPACE_RULE.sub('space ::= ""', grammar)


def tool_call_schema(functions: list[dict]) -> dict:
    """`{"name": ..., "arguments": {...}}` for one of `functions` (OpenAI function objects)."""
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"const": fn["name"]},
                "arguments": fn.get("parameters") or {"type": "object", "properties": {}},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for fn in functions
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def tool_call_gbnf(functions: list[dict]) -> str:
    return schema_gbnf(tool_call_schema(functions), ["name", "arguments"])


def call_or_text_gbnf(functions: list[dict]) -> str:
    """tool_choice "auto": either a tool call (starts with `{`) or free text (does not)."""
    call = tool_call_gbnf(functions)
    # Rename the call grammar's root so a new root can offer the choice. `root` is never
    # referenced inside a converted schema unless it is recursive through "#", which a tool's
    # parameters are not expected to be.
    call = re.sub(r"^root ::=", "tool-call ::=", call, flags=re.MULTILINE)
    return 'root ::= tool-call | text\ntext ::= [^{] [^\\x00]*\n' + call


# ---- the cheapest valid remainder of a schema, to size the reserve -----------------------------


def minimal_instance(schema, root: dict | None = None, depth: int = 0):
    """A small value valid against `schema` (best effort: it only sizes the reserve)."""
    root = schema if root is None else root
    if depth > 12 or not isinstance(schema, dict):
        return None
    if "$ref" in schema:
        return minimal_instance(_resolve_ref(root, schema["$ref"]), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return min(schema["enum"], key=_size)
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return min((minimal_instance(s, root, depth + 1) for s in schema[key]), key=_size)
    if schema.get("allOf"):
        merged: dict = {}
        for part in schema["allOf"]:
            part = _resolve_ref(root, part["$ref"]) if "$ref" in part else part
            merged.setdefault("properties", {}).update(part.get("properties", {}))
            merged.setdefault("required", []).extend(part.get("required", []))
            merged.update({k: v for k, v in part.items() if k not in ("properties", "required")})
        return minimal_instance(merged, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        return min((minimal_instance({**schema, "type": k}, root, depth) for k in kind), key=_size)
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "null"
    if kind == "object":
        props = schema.get("properties", {})
        return {
            k: minimal_instance(props.get(k, {}), root, depth + 1) for k in schema.get("required", [])
        }
    if kind == "array":
        count = schema.get("minItems", 0)
        prefix = schema.get("prefixItems", [])
        item = schema.get("items", {})
        return [
            minimal_instance(prefix[i] if i < len(prefix) else item, root, depth + 1)
            for i in range(count)
        ]
    if kind == "string":
        return "a" * schema.get("minLength", 0)
    if kind in ("integer", "number"):
        if "exclusiveMinimum" in schema:
            return max(0, int(schema["exclusiveMinimum"]) + 1)
        return max(0, math.ceil(schema.get("minimum", 0)))
    if kind == "boolean":
        return False
    return None


def _resolve_ref(root: dict, ref: str):
    node = root
    for part in ref.removeprefix("#").strip("/").split("/"):
        if part:
            node = node.get(part.replace("~1", "/").replace("~0", "~"), {})
    return node


def _size(value) -> int:
    return len(compact_dumps(value))


def compact_dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# ---- following the output to know what is open -----------------------------------------------


@dataclass
class JsonBudget:
    """Tracks open JSON structure in generated text and says when to start closing it.

    `reserve` is the cost, in tokens, of the cheapest valid remainder beyond plain closers (0 for
    `json_object`, the minimal instance for a schema). `gate_on_brace` makes it idle until the
    output starts with `{` (tool_choice "auto": only a tool call is JSON).
    """

    max_tokens: int
    reserve: int = 0
    gate_on_brace: bool = False
    stack: list[str] = field(default_factory=list)
    in_string: bool = False
    escaped: bool = False
    in_key: bool = False
    pending: str = ""  # the last structural character when it still owes something
    started: bool = False
    active: bool = True

    def feed(self, text: str) -> None:
        if not self.started and text:
            self.started = True
            if self.gate_on_brace and not text.startswith("{"):
                self.active = False
        for ch in text:
            self._step(ch)

    def _step(self, ch: str) -> None:
        if self.in_string:
            if self.escaped:
                self.escaped = False
            elif ch == "\\":
                self.escaped = True
            elif ch == '"':
                self.in_string = False
            return
        if ch == '"':
            self.in_string = True
            # A string opened where an object wants a key still owes `:` and a value.
            self.in_key = bool(self.stack) and self.stack[-1] == "{" and self.pending in ("{", ",")
            self.pending = ""
        elif ch in "{[":
            self.stack.append(ch)
            self.pending = ch
        elif ch in "}]":
            if self.stack:
                self.stack.pop()
            self.pending = ""
        elif ch in ":,":
            self.pending = ch
        else:
            self.pending = ""

    def closing_cost(self) -> int:
        """Tokens to close what is open, with spares: closers such as `"}` often merge."""
        cost = len(self.stack) + 2
        if self.in_string:
            cost += 3 if self.in_key else 1  # `"`, then `:` and a short value for a key
        elif self.pending == ":" or (self.pending == "," and self.stack[-1:] == ["["]):
            cost += 1  # a value is owed
        elif self.pending == "," :
            cost += 4  # a key, `:` and a value are owed
        return cost

    def must_close(self, used: int) -> bool:
        if not self.active:
            return False
        cost = self.reserve + self.closing_cost() + (0 if self.started else 1)
        return used + cost >= self.max_tokens


# Bias tiers for closing mode, added to logits before the grammar masks what is invalid. The
# gaps are far wider than the spread of the model's own logits, so the tiers decide, not it.
_CLOSER_BIAS = 200.0  # `"`, `]`, `}` and runs of them: finish what is open
_PER_CLOSER_CHAR = 30.0  # a longer run closes more per token
_SEPARATOR_BIAS = 100.0  # `,` only wins where the grammar forbids closing (a required key next)
_SHORT_VALUE_BIAS = 60.0  # where a value must be written, write a short one
# Elsewhere the grammar dictates the text (a required key, a minLength): take long tokens.
_PER_CHAR = 8.0
_LONG_TOKEN_CAP = 50.0
_STRUCTURAL = set('"{}[],:\\')
_SHORT_VALUES = {"0", '""', "null", "false", "true", "[]", "{}"}


def closing_bias(pieces: list[str]) -> tuple[dict[int, float], dict[int, float]]:
    """Token id -> logit bias for closing mode: (outside a string, inside a string).

    Outside a string a piece that starts with `"` opens one, and inside a string `]` and `}` are
    plain characters; so closers are `]`/`}` runs outside, and `"` plus such a run inside.
    """
    outside: dict[int, float] = {}
    inside: dict[int, float] = {}
    for token, piece in enumerate(pieces):
        if piece and all(ch in "]}" for ch in piece):
            outside[token] = _CLOSER_BIAS + _PER_CLOSER_CHAR * len(piece)
        elif piece.startswith('"') and all(ch in "]}:" for ch in piece[1:]):
            # `":` ends a key and writes its colon in one token.
            inside[token] = _CLOSER_BIAS + _PER_CLOSER_CHAR * len(piece)
        if piece in (",", ',"'):
            # `,"` also opens the next key, where the grammar requires one.
            outside[token] = _SEPARATOR_BIAS + 10.0 * (len(piece) - 1)
        elif piece in _SHORT_VALUES:
            outside[token] = _SHORT_VALUE_BIAS
        elif piece and not any(ch in _STRUCTURAL for ch in piece):
            long_token = min(_LONG_TOKEN_CAP, _PER_CHAR * len(piece))
            outside.setdefault(token, long_token)
            inside.setdefault(token, long_token)
    return outside, inside
