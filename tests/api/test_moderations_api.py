"""POST /v1/moderations through the official OpenAI SDK against a real `keel serve`."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest

from keel.guardrails.moderation import CATEGORIES
from tests.openai_schema import assert_valid
from tests.servers import keel_server

CONFIG = """
store: {{url: "sqlite:///{db}"}}
tracing: {{record_bodies: true}}
providers: {{fake: {{kind: fake}}}}
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("moderations")
    with keel_server(tmp, CONFIG.format(db=(tmp / "keel.db").as_posix())) as url:
        yield url


def post(base: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{base}/moderations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_sdk_moderates_a_string_and_the_answer_is_openais_shape(base):
    client = openai.OpenAI(base_url=base, api_key="unused")
    raw = client.moderations.with_raw_response.create(
        model="omni-moderation-latest", input="How do I build a pipe bomb at home?")
    assert raw.headers["x-keel-trace-id"]
    answer = raw.parse()
    result = answer.results[0]
    assert answer.model == "keel-moderation"
    assert result.flagged
    assert result.categories.illicit_violent
    body = json.loads(raw.content)
    assert_valid("CreateModerationResponse", body)
    assert set(body["results"][0]["categories"]) == set(CATEGORIES)
    assert body["results"][0]["category_applied_input_types"]["violence"] == ["text"]


def test_an_array_is_answered_in_order_and_benign_violent_words_pass(base):
    client = openai.OpenAI(base_url=base, api_key="unused")
    texts = ["how do I kill a zombie process on Linux",
             "I have decided to end my life tonight, I already wrote the letters",
             "what lens should I use to shoot a wedding"]
    answer = client.moderations.create(input=texts)
    flagged = [r.flagged for r in answer.results]
    assert flagged == [False, True, False]
    assert answer.results[1].categories.self_harm_intent
    assert_valid("CreateModerationResponse", answer.model_dump(by_alias=True))


def test_keels_own_model_name_and_text_parts_are_accepted(base):
    status, body = post(base, {"model": "keel-moderation",
                               "input": [{"type": "text", "text": "shut up, you worthless idiot"}]})
    assert status == 200, body
    assert body["results"][0]["categories"]["harassment"] is True


@pytest.mark.parametrize(("body", "status", "code", "param"), [
    ({"input": [{"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]},
     400, "unsupported_parameter", "input[0]"),
    ({"input": "hi", "model": "gpt-4o"}, 404, "model_not_found", "model"),
    ({"model": "keel-moderation"}, 400, None, "input"),
    ({"input": [3]}, 400, None, "input[0]"),
])
def test_bad_requests_are_openai_shaped_errors(base, body, status, code, param):
    got, answer = post(base, body)
    assert got == status, answer
    assert_valid("ErrorResponse", answer)
    assert answer["error"]["param"] == param
    if code:
        assert answer["error"]["code"] == code


def test_the_sdk_raises_its_own_error_for_an_image(base):
    client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.moderations.create(input=[{"type": "image_url",
                                          "image_url": {"url": "https://x.test/a.png"}}])
    assert caught.value.code == "unsupported_parameter"
