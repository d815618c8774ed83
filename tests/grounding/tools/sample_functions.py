"""Functions the `python` tool tests offer to the model."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Annotated, Literal

from pydantic import BaseModel, Field


def add(a: int, b: int = 2) -> int:
    """Add two integers."""
    return a + b


class Quote(BaseModel):
    term_years: int
    rate: float


async def quote(
    term_years: Annotated[int, Field(description="loan term in years", ge=1, le=40)],
    kind: Literal["fixed", "arm"] = "fixed",
) -> Quote:
    """A mortgage rate quote.

    Returns the rate for a loan term.
    """
    return Quote(term_years=term_years, rate=6.5 if kind == "fixed" else 5.9)


def greet(name: str) -> str:
    """Say hello."""
    return f"hello {name}"


def slow(seconds: float) -> str:
    """Sleep in a thread, then answer."""
    time.sleep(seconds)
    return "slept"


async def async_slow(seconds: float) -> str:
    """Sleep on the event loop, then answer."""
    await asyncio.sleep(seconds)
    return "slept"


def broken() -> str:
    """Always fails."""
    raise ValueError("the database is down")


RELEASE = threading.Event()  # a test puts a fresh one here, and sets it to let `hang` return


def hang() -> str:
    """Block its thread until the test releases it (a function stuck in I/O)."""
    RELEASE.wait(120)  # read at call time: each test's own event
    return "released"


def echo_fail(text: str) -> str:
    """Fails with a message that quotes its argument (as many real errors do)."""
    raise ValueError(f"cannot handle {text!r}")
