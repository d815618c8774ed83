"""The HTTP surface: OpenAI-compatible routes, SSE streaming and error mapping.

No business logic lives here: a handler reads the body, hands it to the `Gateway` (which
validates it and runs the route's pipeline) and writes what comes back, in the OpenAI wire
format, with Keel's `x-keel-*` headers. Every error leaves as `{"error": {...}}`.
"""

from keel.api.app import create_app

__all__ = ["create_app"]
