"""0004: the scale a feedback score is on (thumbs or rating), so that a rating of 1 is not read
as a thumbs up."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_feedback_scale"
down_revision = "0003_evals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("feedback", sa.Column("scale", sa.String(10), nullable=True))


def downgrade() -> None:
    op.drop_column("feedback", "scale")
