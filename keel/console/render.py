"""Rendering console pages: one Jinja2 environment, shared filters, and the page context."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import jinja2
from aiohttp import web

from keel.api.appkeys import GATEWAY
from keel.api.auth import principal_of

NAV = (
    ("traces", "Traces", "/console/traces"),
    ("evals", "Evals", "/console/evals"),
    ("annotate", "Annotate", "/console/annotate"),
    ("datasets", "Datasets", "/console/datasets"),
    ("knowledge", "Knowledge", "/console/knowledge"),
    ("costs", "Costs", "/console/costs"),
    ("chat", "Chat", "/console/chat"),
)


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "—"
    return dt.datetime.fromtimestamp(float(epoch), dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _cost(value: float | None) -> str:
    if value is None:
        return "—"
    return f"${value:,.4f}" if value < 1 else f"${value:,.2f}"


def _number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def _pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("keel.console", "templates"),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=_when, ms=_ms, cost=_cost, number=_number, pretty_json=_pretty_json)
    return env


ENV = _environment()


def render(request: web.Request, template: str, *, status: int = 200,
           headers: dict[str, str] | None = None, **context: Any) -> web.Response:
    """A full page, or only its `content` block when htmx asks for a fragment (`HX-Request`
    without `HX-Boosted`)."""
    gateway = request.app[GATEWAY]
    page = {
        "nav": NAV,
        "principal": principal_of(request),
        "auth_on": gateway.keys is not None,
        "request_path": request.path,
        **context,
    }
    html = ENV.get_template(template).render(page)
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8",
                        headers=headers)


def error_page(request: web.Request, status: int, heading: str, message: str,
               back: list[tuple[str, str]] | tuple[tuple[str, str], ...] = (
                   ("/console", "Console home"),)) -> web.Response:
    """An HTML error page with its status (400 bad input, 404 unknown id): what was wrong, and
    the ways back. Every console family answers errors through it."""
    return render(request, "error.html", status=status, title=heading, heading=heading,
                  message=message, back=list(back))


def render_fragment(template: str, **context: Any) -> str:
    """A template rendered alone (a table's rows, a live-update row) for htmx or SSE."""
    return ENV.get_template(template).render(context)
