"""The scorecard the `rubric` grader uses when a suite gives none: relevance, credibility and
correctness, each anchored by example answers to one support question.

The anchors are concrete answers rather than adjectives ("show, don't tell"): a judge compares
the answer in front of it with them, which it does far more consistently than it interprets
"mostly relevant".
"""

DEFAULT_EXAMPLE_QUESTION = "How long does a refund take?"

# The reference answer the correctness anchors are measured against.
_REFERENCE = "Refunds reach the original payment method 5-7 business days after we receive the item."

DEFAULT_CRITERIA = [
    {
        "name": "relevance",
        "description": "Does the answer address the question that was asked, without drifting "
                       "into things the user did not ask about?",
        "anchors": {
            5: '"Refunds reach your original payment method 5-7 business days after we '
               'receive the returned item."',
            3: '"Refunds are handled by our billing team. By the way, you can also exchange '
               'items in any of our stores."',
            1: '"Our stores open at 9am and we sell gift cards."',
        },
    },
    {
        "name": "credibility",
        "description": "Is the answer stated with the confidence the facts allow: specific where "
                       "it can be, hedged where it is unsure, with nothing invented to sound "
                       "authoritative?",
        "anchors": {
            5: '"Refunds take 5-7 business days, as the refund policy in your order '
               'confirmation says."',
            3: '"I think refunds take about a week, probably, but it depends."',
            1: '"Refunds are instant and guaranteed by federal law in every country."',
        },
    },
    {
        "name": "correctness",
        "description": "Are the facts of the answer right, judged against the reference answer "
                       f"or context when given? (For the examples the reference is: {_REFERENCE})",
        "anchors": {
            5: '"5-7 business days once the item is back with us."',
            3: '"About two weeks after you send the item back."',
            1: '"We do not offer refunds."',
        },
    },
]
