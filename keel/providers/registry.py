"""Find a provider class by its `kind` (the `keel.providers` entry point group)."""

from __future__ import annotations

from keel.plugins import load


def provider_class(kind: str) -> type:
    return load("keel.providers", kind, "provider kind")
