"""Find a provider class by its `kind`, through the `keel.providers` entry point group."""

from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points

from keel.errors import ConfigError

# Built-ins are listed here too so a source checkout works before `pip install -e`.
_BUILTIN = {
    "openai": "keel.providers.openai:OpenAIProvider",
    "local": "keel.providers.local:LocalProvider",
    "fake": "keel.providers.fake:FakeProvider",
}


@cache
def provider_kinds() -> dict[str, str]:
    kinds = dict(_BUILTIN)
    for ep in entry_points(group="keel.providers"):
        kinds[ep.name] = ep.value
    return kinds


def provider_class(kind: str) -> type:
    target = provider_kinds().get(kind)
    if target is None:
        known = ", ".join(sorted(provider_kinds()))
        raise ConfigError(f"unknown provider kind {kind!r}; expected one of: {known}")
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
