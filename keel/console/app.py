"""The console's routes: sign-in, static files, and each page family's views."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from keel.api.appkeys import GATEWAY
from keel.api.auth import CONSOLE_COOKIE
from keel.console.render import render
from keel.console.views import annotate, chat, costs, data, evals, traces
from keel.errors import KeelError
from keel.ops.principal import authorize

STATIC = Path(__file__).parent / "static"
COOKIE_MAX_AGE_S = 12 * 3600


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/console", index, name="console")
    router.add_get("/console/login", login_page, name="console-login")
    router.add_post("/console/login", login)
    router.add_post("/console/logout", logout)
    router.add_static("/console/static", STATIC, name="console-static", append_version=True)
    for views in (traces, evals, annotate, data, costs, chat):
        views.add_routes(router)


async def index(request: web.Request) -> web.Response:
    raise web.HTTPFound("/console/traces")


async def login_page(request: web.Request) -> web.Response:
    if request.app[GATEWAY].keys is None:  # auth off: nothing to sign in to
        raise web.HTTPFound(_next(request.query.get("next")))
    return render(request, "login.html", title="Sign in", error=request.query.get("error"),
                  next=_next(request.query.get("next")))


async def login(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    form = await request.post()
    key = str(form.get("key", "")).strip()
    target = _next(str(form.get("next", "")) or None)
    if gateway.keys is None:
        raise web.HTTPSeeOther(target)
    try:
        authorize(await gateway.keys.resolve(key), "console")
    except KeelError as exc:  # the form again, saying why (200, as sign-in forms answer)
        return render(request, "login.html", title="Sign in", error=exc.message, next=target)
    response = web.HTTPSeeOther(target)
    response.set_cookie(CONSOLE_COOKIE, key, httponly=True, samesite="Strict", path="/",
                        secure=request.secure, max_age=COOKIE_MAX_AGE_S)
    raise response


async def logout(request: web.Request) -> web.Response:
    response = web.HTTPSeeOther("/console/login")
    response.del_cookie(CONSOLE_COOKIE, path="/")
    raise response


def _next(target: str | None) -> str:
    """Only a console path: a sign-in link must not bounce the browser to another site."""
    if target and target.startswith("/console") and not target.startswith("//"):
        return target
    return "/console/traces"
