"""What changes a cache key and what does not: one test per field."""

from __future__ import annotations

import pytest

from keel.orchestration.cache.keys import exact_key, namespace, query_text

BASE = {
    "model": "support",
    "messages": [
        {"role": "system", "content": "You answer support questions."},
        {"role": "user", "content": "How do I delete my account?"},
    ],
    "temperature": 0,
}


def key(body=BASE, route="support", upstream="gpt-x", version=None):
    return exact_key(route, upstream, body, version)


def ns(body=BASE, route="support", upstream="gpt-x", version=None):
    return namespace(route, upstream, body, version)


def with_(**fields):
    return {**BASE, **fields}


def test_the_key_is_stable_and_ignores_field_order():
    reordered = dict(reversed(list(BASE.items())))
    assert key() == key(dict(BASE)) == key(reordered)
    assert len(key()) == 64


def test_route_changes_it():
    assert key(route="other") != key()
    assert ns(route="other") != ns()


def test_upstream_model_changes_it():
    assert key(upstream="gpt-y") != key()
    assert ns(upstream="gpt-y") != ns()


def test_the_question_changes_the_exact_key_but_not_the_namespace():
    other = with_(messages=[BASE["messages"][0], {"role": "user", "content": "Delete account?"}])
    assert key(other) != key()
    assert ns(other) == ns()


def test_the_system_prompt_changes_both():
    other = with_(messages=[{"role": "system", "content": "Be terse."}, BASE["messages"][1]])
    assert key(other) != key()
    assert ns(other) != ns()


def test_earlier_turns_change_both():
    other = with_(messages=[
        BASE["messages"][0],
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        BASE["messages"][1],
    ])
    assert key(other) != key()
    assert ns(other) != ns()


@pytest.mark.parametrize("field,value", [
    ("temperature", 0.7),
    ("top_p", 0.5),
    ("max_tokens", 10),
    ("max_completion_tokens", 10),
    ("stop", ["\n"]),
    ("presence_penalty", 0.5),
    ("frequency_penalty", 0.5),
    ("logit_bias", {"50256": -100}),
    ("seed", 42),
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
    ("tool_choice", "none"),
    ("parallel_tool_calls", False),
    ("response_format", {"type": "json_object"}),
    ("logprobs", True),
    ("n", 2),
    ("reasoning_effort", "low"),
    ("guided_json", {"type": "object"}),  # a provider extension: unknown, so it counts
])
def test_parameters_that_change_the_answer_change_both(field, value):
    assert key(with_(**{field: value})) != key(), field
    assert ns(with_(**{field: value})) != ns(), field


def test_a_different_seed_changes_it():
    assert key(with_(seed=1)) != key(with_(seed=2))


def test_a_different_response_format_schema_changes_it():
    a = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    b = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "array"}}}
    assert key(with_(response_format=a)) != key(with_(response_format=b))


@pytest.mark.parametrize("field,value", [
    ("stream", True),
    ("stream_options", {"include_usage": True}),
    ("user", "user-123"),
    ("metadata", {"team": "a"}),
    ("store", True),
    ("model", "an-alias"),  # the route (and its upstream model) stand for it
])
def test_delivery_and_attribution_fields_do_not_change_it(field, value):
    assert key(with_(**{field: value})) == key(), field
    assert ns(with_(**{field: value})) == ns(), field


def test_a_null_parameter_is_the_same_as_none():
    assert key(with_(top_p=None)) == key()


def test_the_knowledge_version_changes_both():
    assert key(version="v1") != key(version="v2")
    assert ns(version="v1") != ns(version="v2")
    assert key(version="v1") != key()


def test_query_text_is_the_last_user_message():
    body = with_(messages=[*BASE["messages"], {"role": "assistant", "content": "Sure."}])
    assert query_text(body) == "How do I delete my account?"
    parts = with_(messages=[{"role": "user", "content": [{"type": "text", "text": "a"},
                                                          {"type": "text", "text": "b"}]}])
    assert query_text(parts) == "a b"


def test_a_question_with_an_image_has_no_semantic_key():
    body = with_(messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])
    assert query_text(body) is None
    assert query_text(with_(messages=[{"role": "system", "content": "x"}])) is None
