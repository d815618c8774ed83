"""A small mortgage-rate microservice: the fact source the `get_mortgage_rates` tool calls.

    python examples/mortgage-rates/service.py --port 18080
    curl 'http://127.0.0.1:18080/rates?term=30-year&state=CA'

GET /rates?term=15-year|20-year|30-year&state=XX answers today's rates for that term and state as JSON,
or as one paragraph of text with `&format=text`.
The data is a fixed sample (no network), so answers are the same on every machine.
"""

from __future__ import annotations

import argparse
from datetime import date

from aiohttp import web

# National averages in percent by term; each state adds a small fixed spread.
BASE_RATES = {15: {"rate": 5.875, "apr": 6.012}, 20: {"rate": 6.250, "apr": 6.371},
              30: {"rate": 6.625, "apr": 6.742}}
STATE_SPREAD = {"CA": 0.125, "NY": 0.250, "TX": 0.000, "FL": 0.125, "WA": 0.0625}
LENDERS = ["Harbor Bank", "Summit Credit Union", "Keystone Mortgage"]


def quote(term_years: int, state: str) -> dict:
    base, spread = BASE_RATES[term_years], STATE_SPREAD.get(state, 0.0)
    offers = [
        {"lender": lender, "rate": round(base["rate"] + spread + step, 3),
         "apr": round(base["apr"] + spread + step, 3), "points": points}
        for lender, step, points in zip(LENDERS, (0.0, -0.125, 0.125), (0.0, 0.7, 0.0))
    ]
    return {
        "as_of": date.today().isoformat(),
        "state": state,
        "term_years": term_years,
        "average_rate": round(base["rate"] + spread, 3),
        "average_apr": round(base["apr"] + spread, 3),
        "offers": offers,
        "source": "sample data from examples/mortgage-rates/service.py",
    }


async def rates(request: web.Request) -> web.Response:
    term = parse_term(request.query.get("term", "30"))
    if term not in BASE_RATES:
        raise web.HTTPBadRequest(text="term must be one of 15-year, 20-year, 30-year")
    state = request.query.get("state", "US").upper()
    if len(state) != 2 or not state.isalpha():
        raise web.HTTPBadRequest(text="state must be a two-letter code, e.g. CA")
    data = quote(term, state)
    if request.query.get("format") == "text":
        return web.Response(text=summary(data))
    return web.json_response(data)


def parse_term(text: str) -> int | None:
    """"30-year", "30 years" or "30": people (and models) write the term in many ways."""
    digits = text.strip().lower().removesuffix("s").removesuffix("year").strip(" -")
    return int(digits) if digits.isdigit() else None


def summary(data: dict) -> str:
    """One paragraph: easier than JSON for a very small model to answer from."""
    offers = "; ".join(
        f"{o['lender']} {o['rate']:.3f}% (APR {o['apr']:.3f}%"
        + (f", {o['points']} points)" if o["points"] else ")")
        for o in data["offers"]
    )
    return (
        f"{data['term_years']}-year fixed mortgage rates in {data['state']} on {data['as_of']}: "
        f"average {data['average_rate']:.3f}% (APR {data['average_apr']:.3f}%). Offers: {offers}."
    )


def app() -> web.Application:
    application = web.Application()
    application.router.add_get("/rates", rates)
    return application


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18080)
    args = parser.parse_args()
    web.run_app(app(), host=args.host, port=args.port)
