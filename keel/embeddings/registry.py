"""Build an embedder by its name in keel.yaml."""

from __future__ import annotations

from keel.errors import ModelNotFound
from keel.plugins import load


def make_embedder(config, name: str):
    """The (not yet started) embedder named `name` in `config` (a KeelConfig)."""
    specs = config.embedder_configs()
    spec = specs.get(name)
    if spec is None:
        known = ", ".join(sorted(specs))
        raise ModelNotFound(f"no embedder named {name!r} (embedders: {known})", param="model")
    cls = load("keel.embedders", spec.kind, "embedder kind")
    return cls(name, cls.Options.model_validate(spec.model_extra or {}))
