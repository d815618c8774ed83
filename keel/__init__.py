"""Keel: a self-hostable, OpenAI-compatible production stack for LLM applications.

An application points its OpenAI client at Keel; Keel runs each request down a pipeline of
layers (guards, cache, router, grounding, JSON mode, ...) to a provider, and records a trace.
"""

__version__ = "0.1.0"
