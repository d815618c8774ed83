"""Training backends behind one protocol (base.py): `openai` and `local`, found by name."""

from __future__ import annotations

from keel.distill.backends.base import TrainingBackend, backend_class

__all__ = ["TrainingBackend", "backend_class"]
