"""`keel distill` subcommands (see keel/cli/distill.py)."""

from __future__ import annotations

COMMANDS: list = []
