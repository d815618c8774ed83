"""Authentication on every route: who is asking (an API key), and may they use this route.

The `authenticate` middleware runs inside `openai_errors`, so a refusal leaves in the OpenAI
shape: 401 `invalid_api_key` (with `WWW-Authenticate: Bearer`) for no key or one Keel does not
accept, 403 `surface_not_allowed` for a key whose scopes leave the route out. The key comes from
`Authorization: Bearer KEY` or, as Azure OpenAI clients send it, an `api-key` header.

Each route is one surface (keel.ops.principal.SURFACES), chosen by the route the request
matched (its canonical path and method), never by the raw URL. A registered route missing from
`surface_for` is admin-only until it is classified: forgetting one fails closed, and
tests/api/test_auth.py fails for it.

The web console (keel.console) signs in by putting the key in an HttpOnly, SameSite=Strict
cookie. The cookie counts only for the console's own page loads (GET /console/...) and for
requests that carry the `X-Keel-Console` or `HX-Request` header: a browser sends such a header
cross-origin only after a CORS preflight, which Keel never grants, so another site cannot spend
the key; a console form posted without JavaScript counts too when the browser marks it
`Sec-Fetch-Site: same-origin`. A console page whose cookie is missing or refused redirects to /console/login. With auth off (`gateway.keys is None`: no KEEL_ADMIN_KEY
and no `auth:` section, which `check_exposure` allows on loopback only) every request is the
anonymous principal, with every surface.
"""

from __future__ import annotations

import ipaddress
import logging

from aiohttp import web

from keel.api.appkeys import GATEWAY
from keel.errors import AuthenticationError, ConfigError, PermissionDenied
from keel.ops.principal import ANONYMOUS, Principal, authorize

# Typed request storage where aiohttp has it (3.12+); a plain name before.
PRINCIPAL = web.RequestKey("principal", Principal) if hasattr(web, "RequestKey") \
    else "keel.principal"
log = logging.getLogger("keel.auth")

PUBLIC = "public"  # no key needed
ANY_KEY = "any"  # any valid key

# (method, canonical route path) -> surface. HEAD is looked up as GET.
ROUTE_SURFACES: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("POST", "/v1/chat/completions"): "chat",
    ("POST", "/v1/embeddings"): "embeddings",
    ("POST", "/v1/moderations"): "moderations",
    ("GET", "/v1/models"): ANY_KEY,
    ("GET", "/v1/models/{model_id}"): ANY_KEY,
    ("GET", "/v1/knowledge"): "knowledge.read",
    ("POST", "/v1/knowledge/{collection}/search"): "knowledge.read",
    ("POST", "/v1/knowledge/{collection}/documents"): "knowledge.write",
    ("DELETE", "/v1/knowledge/{collection}/documents/{doc_id}"): "knowledge.write",
    ("GET", "/v1/feedback"): "feedback",
    ("POST", "/v1/feedback"): "feedback",
    ("GET", "/metrics"): "metrics",
    ("GET", "/console/login"): PUBLIC,
    ("POST", "/console/login"): PUBLIC,
    ("POST", "/console/logout"): PUBLIC,
    ("GET", "/console/static"): PUBLIC,
}
# Route families whose every route (any method) is one surface: the key administration API.
FAMILY_SURFACES: dict[str, str] = {"/v1/keys": "admin", "/console": "console"}
CONSOLE_COOKIE = "keel_console"
CONSOLE_HEADERS = ("X-Keel-Console", "HX-Request")


def surface_for(method: str, canonical: str) -> str | None:
    """The surface of a registered route, or None for one nobody classified yet."""
    surface = ROUTE_SURFACES.get(("GET" if method == "HEAD" else method, canonical))
    if surface is not None:
        return surface
    for root, surface in FAMILY_SURFACES.items():
        if canonical == root or canonical.startswith(root + "/"):
            return surface
    return None


def principal_of(request: web.Request) -> Principal:
    return request.get(PRINCIPAL, ANONYMOUS)


def token_of(request: web.Request) -> str | None:
    """The API key a request carries, or None."""
    headers = request.headers
    authorization = headers.get("Authorization")
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    api_key = headers.get("api-key", "").strip()
    if api_key:
        return api_key
    if _console_cookie_counts(request):
        return request.cookies.get(CONSOLE_COOKIE) or None
    return None


def _console_cookie_counts(request: web.Request) -> bool:
    if any(h in request.headers for h in CONSOLE_HEADERS):
        return True
    if not is_console_path(request.path):
        return False
    # A console form posted without JavaScript: browsers mark where a request comes from, and
    # SameSite=Strict already keeps the cookie off another site's requests.
    return (request.method in ("GET", "HEAD")
            or request.headers.get("Sec-Fetch-Site") == "same-origin")


def is_console_path(path: str) -> bool:
    return path == "/console" or path.startswith("/console/")


@web.middleware
async def authenticate(request: web.Request, handler):
    keys = request.app[GATEWAY].keys
    if keys is None:  # auth off (loopback only, or --insecure-no-auth)
        return await handler(request)
    match_info = request.match_info
    resource = match_info.route.resource
    if resource is None:  # an unknown URL (404) or method (405): answered as such to a valid key
        request[PRINCIPAL] = await keys.resolve(token_of(request))
        return await handler(request)
    surface = surface_for(request.method, resource.canonical)
    if surface == PUBLIC:
        return await handler(request)
    if surface is None:
        log.warning("route %s %s has no surface in keel.api.auth: admin only",
                    request.method, resource.canonical)
        surface = "admin"
    try:
        principal = await keys.resolve(token_of(request))
        request[PRINCIPAL] = principal
        if surface != ANY_KEY:
            authorize(principal, surface)
    except (AuthenticationError, PermissionDenied) as exc:
        if request.method in ("GET", "HEAD") and is_console_path(request.path):
            raise _to_login(request, exc) from None
        raise
    return await handler(request)


def _to_login(request: web.Request, exc: Exception) -> web.HTTPSeeOther:
    """A console page without a usable key: the sign-in page, which says why and comes back."""
    query = {"next": request.path_qs}
    if request.cookies.get(CONSOLE_COOKIE):  # a key was given and refused: say so
        query["error"] = str(exc)
    return web.HTTPSeeOther(request.app.router["console-login"].url_for().with_query(query))


# -- who may start without auth --------------------------------------------------------------

def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost; an empty host binds every interface."""
    if not host:
        return False
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything, so it counts as exposed


def check_exposure(config, host: str | None, insecure_no_auth: bool = False) -> None:
    """Refuse to serve without auth on an address others can reach, unless told to."""
    if config.auth_settings() is not None or insecure_no_auth or is_loopback(host):
        return
    raise ConfigError(
        f"refusing to serve on {host or 'every interface'} without authentication: anyone who "
        f"can reach it could spend the provider keys and write into knowledge collections. "
        f"Turn auth on by setting KEEL_ADMIN_KEY (e.g. KEEL_ADMIN_KEY=$(openssl rand -hex 32)) "
        f"or an `auth:` section in keel.yaml (see docs/auth.md), bind 127.0.0.1, or pass "
        f"--insecure-no-auth to serve without keys anyway.")
