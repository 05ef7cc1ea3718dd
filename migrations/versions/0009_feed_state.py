"""Feed state: fetch backoff, pinged topics, SUP windows.

A topic's consecutive failed fetches (its retry backs off exponentially up to poll_max_interval),
when a publisher last pinged it (a pinged topic is polled only at poll_max_interval, as a safety
net), and for a SUP document the ``updated_time`` of the last one read (the next one's
``since_time`` must reach back to it, or the hub fetches every feed the document covers).

Revision ID: 0009_feed_state
Revises: 0008_idempotency
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_feed_state"
down_revision: str | Sequence[str] | None = "0008_idempotency"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("hub_topics", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fetch_failures", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("pinged_at", sa.Float(), nullable=True))
    with op.batch_alter_table("hub_sup_sources", schema=None) as batch_op:
        batch_op.add_column(sa.Column("updated_time", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("hub_sup_sources", schema=None) as batch_op:
        batch_op.drop_column("updated_time")
    with op.batch_alter_table("hub_topics", schema=None) as batch_op:
        batch_op.drop_column("pinged_at")
        batch_op.drop_column("fetch_failures")
