"""Registrations and subscriptions record the client that made them, for per-client shares of caps.

One client could fill --max-registrations, or a callback host's --max-subscriptions-per-callback-host,
and hold it for the lease. With the client on the row, its share (--max-registrations-per-client,
--max-subscriptions-per-callback-host-per-client) is an index lookup. Rows made before have no
client and count against nobody's share.

Revision ID: 0005_client_shares
Revises: 0004_pending_by_subscription
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_client_shares"
down_revision: str | Sequence[str] | None = "0004_pending_by_subscription"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("relay_registrations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("client", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_relay_registrations_client", ["client"], unique=False)
    with op.batch_alter_table("hub_subscriptions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("client", sa.String(length=64), nullable=True))
        batch_op.create_index(
            "ix_hub_subscriptions_state_callback_host_client", ["state", "callback_host", "client"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("hub_subscriptions", schema=None) as batch_op:
        batch_op.drop_index("ix_hub_subscriptions_state_callback_host_client")
        batch_op.drop_column("client")
    with op.batch_alter_table("relay_registrations", schema=None) as batch_op:
        batch_op.drop_index("ix_relay_registrations_client")
        batch_op.drop_column("client")
