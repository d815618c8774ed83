"""Grading functions for the python grader's tests, as a user would write them."""

from __future__ import annotations


def mentions_paris(sample, output):
    return "paris" in output.text.lower()


def length_score(sample, output):
    return len(output.text) / 10


async def judged(sample, output):
    return {"score": 0.4, "passed": True, "reasoning": "close enough", "label": "ok",
            "details": {"chars": len(output.text)}}


def broken(sample, output):
    raise ZeroDivisionError("oops")


def wrong_type(sample, output):
    return "great"
