"""examples/mortgage-rates: its keel.yaml loads, and its tool reaches its service (the model is
scripted here; the README shows a run on the embedded model)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from aiohttp.test_utils import TestServer

from keel.config import load_config
from keel.gateway import Gateway
from keel.pipeline import Trace
from tests.grounding.tools.scripted import ScriptedProvider, calls, tool_results

EXAMPLE = Path(__file__).parents[3] / "examples" / "mortgage-rates"


def service_module():
    spec = importlib.util.spec_from_file_location("mortgage_service", EXAMPLE / "service.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_example_tool_calls_the_example_service(tmp_path, monkeypatch):
    server = TestServer(service_module().app(), host="127.0.0.1")
    await server.start_server()
    monkeypatch.setenv("MORTGAGE_RATES_URL", f"http://127.0.0.1:{server.port}")
    config = load_config(EXAMPLE / "keel.yaml")
    config.state_dir = tmp_path
    gateway = Gateway(config)
    provider = ScriptedProvider(calls(("get_mortgage_rates", {"term": "30-year", "state": "CA"})),
                                lambda body: {"content": tool_results(body)[0], "tool_calls": None})
    gateway.routes["smollm2-rates"].provider = provider
    tools_layers = [layer for layer in gateway.layers if layer.name == "tools"]
    for layer in tools_layers:
        await layer.start()
    try:
        body = {"model": "smollm2-rates",
                "messages": [{"role": "user", "content": "30-year rates in California?"}]}
        ctx = gateway.context_for(body, Trace())
        result = await ctx.route.handler(ctx)
    finally:
        for layer in tools_layers:
            await layer.aclose()
        await server.close()
    first = provider.bodies[0]
    assert first["tool_choice"] == {"type": "function", "function": {"name": "get_mortgage_rates"}}
    answer = result["choices"][0]["message"]["content"]
    assert answer.startswith("30-year fixed mortgage rates in CA on ")
    assert "average 6.750% (APR 6.867%)" in answer


def test_the_service_parses_terms_people_write():
    service = service_module()
    assert [service.parse_term(t) for t in ("30-year", "30 years", "30", "thirty")] == [
        30, 30, 30, None]
    assert service.quote(15, "TX")["average_rate"] == 5.875
