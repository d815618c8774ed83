"""Every conformance test runs on each backend: this process's memory, and a real Redis."""

import pytest

from keel.state.memory import MemoryState
from keel.state.redis import RedisState


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def state(request):
    if request.param == "memory":
        yield MemoryState()
        return
    server = request.getfixturevalue("redis_server")
    # Generous: the conformance tests are about semantics; the timeout has tests of its own.
    state = RedisState(server.url, prefix="conf:", timeout_s=5)
    yield state
    await state.aclose()
