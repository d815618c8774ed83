"""`keel distill`: teacher outputs → training set → student → eval → route (docs/distill.md).

The subcommands live in one module per step, each exporting COMMANDS:
keel/cli/distill_dataset.py (dataset, validate, list), keel/cli/distill_train.py (train, jobs,
cancel) and keel/cli/distill_eval.py (evaluate, promote, judge).
"""

from __future__ import annotations

import click


@click.group("distill")
def distill_group() -> None:
    """Distil a strong model's (or pipeline's) answers into a cheaper student, and route to it."""


def _register() -> None:
    from keel.cli import distill_dataset, distill_eval, distill_train

    for module in (distill_dataset, distill_train, distill_eval):
        for command in module.COMMANDS:
            distill_group.add_command(command)


_register()
