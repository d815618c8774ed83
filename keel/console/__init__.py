"""The web console: traces, evals, annotation, datasets, knowledge, costs and a reference chat.

Server-rendered pages (Jinja2) on the same aiohttp app and port as the API, with a little
vendored JavaScript (htmx for partial updates, uPlot for charts; see static/vendor/README.md):
no Node build step and no CDN, so it works offline. Pages read through the same store functions
as the CLI (keel.ops.trace_queries, keel.evals.*, keel.ops.usage, the knowledge base); no SQL
lives here. Sign-in uses the LLMOps keys (keel.api.auth): the admin key or a key with the
`console` surface, and with auth off the console is open exactly as the API is.
"""

from keel.console.app import add_routes

__all__ = ["add_routes"]
