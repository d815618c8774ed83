"""keel.messages: the one helper for the text of a message."""

from keel.messages import content_text, last_user_text


def test_content_text_of_each_shape():
    assert content_text("hi") == "hi"
    assert content_text(None) == ""
    parts = [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}},
             {"type": "text", "text": "b"}, {"type": "refusal", "refusal": "no"}]
    assert content_text(parts) == "a b no"
    assert content_text(parts, "\n") == "a\nb\nno"
    assert content_text(3) == "3"


def test_last_user_text():
    messages = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "x"},
                {"role": "user", "content": [{"type": "text", "text": "second"}]},
                {"role": "assistant", "content": None}]
    assert last_user_text(messages) == "second"
    assert last_user_text([{"role": "system", "content": "s"}]) == ""
    assert last_user_text(None) == ""
