"""What the `rag` grader asks the judge, per metric: a system prompt, a user template
(<question>, <answer> and <context> are replaced), and the JSON schema of the reply.

Each reply puts reasoning before the verdict, so the verdict is reasoned, not guessed first.
"""

PROMPTS = {
    "faithfulness": (
        ("You check whether an answer is supported by the retrieved context it was written "
         "from. Split the answer into its individual factual claims. For each claim, reason "
         "about whether the context states it or directly implies it, then give a verdict. "
         "Knowledge from outside the context does not count as support. Reply with JSON only."),
        ("[Context]\n<context>\n\n[Question]\n<question>\n\n[Answer]\n<answer>\n\n"
         'Reply with {"claims": [{"claim": "...", "reasoning": "...", "supported": true or '
         'false}]}. If the answer makes no factual claim (a refusal, a question back), reply '
         'with {"claims": []}.'),
    ),
    "context_relevance": (
        ("You judge retrieval: whether each retrieved passage is relevant to a question, that "
         "is, whether it holds information that helps answer it. Reason about each passage "
         "before giving a verdict. Reply with JSON only."),
        ("[Question]\n<question>\n\n[Retrieved passages]\n<context>\n\n"
         'Reply with {"passages": [{"index": <passage number>, "reasoning": "...", '
         '"relevant": true or false}]}, one entry per passage.'),
    ),
    "answer_relevance": (
        ("You judge whether an answer addresses the question that was asked, whatever its "
         "correctness: an answer that responds to the question is relevant, one that drifts "
         "or evades is not. Reason first, then score. Reply with JSON only."),
        ("[Question]\n<question>\n\n[Answer]\n<answer>\n\n"
         'Reply with {"reasoning": "...", "score": 1, 0.5 or 0}: 1 when the answer fully '
         "addresses the question, 0.5 when only partly, 0 when not at all."),
    ),
}

_VERDICT = {"type": "boolean"}

SCHEMAS = {
    "faithfulness": {
        "type": "object", "additionalProperties": False, "required": ["claims"],
        "properties": {"claims": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["claim", "reasoning", "supported"],
            "properties": {"claim": {"type": "string"}, "reasoning": {"type": "string"},
                           "supported": _VERDICT}}}},
    },
    "context_relevance": {
        "type": "object", "additionalProperties": False, "required": ["passages"],
        "properties": {"passages": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["index", "reasoning", "relevant"],
            "properties": {"index": {"type": "integer", "minimum": 1},
                           "reasoning": {"type": "string"}, "relevant": _VERDICT}}}},
    },
    "answer_relevance": {
        "type": "object", "additionalProperties": False, "required": ["reasoning", "score"],
        "properties": {"reasoning": {"type": "string"},
                       "score": {"type": "number", "minimum": 0, "maximum": 1}},
    },
}
