"""Subscriptions record their callback's host, so the per-host cap is an index lookup.

The cap (--max-subscriptions-per-callback-host) used to count with three LIKE patterns over every
active subscription, on every subscribe: quadratic in the number of subscriptions.

Revision ID: 0003_callback_host
Revises: 0002_hub
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx
import sqlalchemy as sa
from alembic import op

revision: str = "0003_callback_host"
down_revision: str | Sequence[str] | None = "0002_hub"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("hub_subscriptions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("callback_host", sa.String(length=255), nullable=False, server_default=""))
    subscriptions = sa.table(
        "hub_subscriptions",
        sa.column("id", sa.Integer()),
        sa.column("callback", sa.String()),
        sa.column("callback_host", sa.String()),
    )
    bind = op.get_bind()
    rows = bind.execute(sa.select(subscriptions.c.id, subscriptions.c.callback)).all()
    for row in rows:
        try:
            host = httpx.URL(row.callback).raw_host.decode("ascii").lower()[:255]
        except (httpx.InvalidURL, UnicodeDecodeError):
            host = ""
        bind.execute(subscriptions.update().where(subscriptions.c.id == row.id).values(callback_host=host))
    with op.batch_alter_table("hub_subscriptions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_hub_subscriptions_state_callback_host"), ["state", "callback_host"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("hub_subscriptions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_hub_subscriptions_state_callback_host"))
        batch_op.drop_column("callback_host")
