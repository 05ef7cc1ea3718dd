"""The outbox finds a subscription's earlier pending delivery through an index, whatever its history.

A delivery is claimable only when no earlier delivery of its subscription is pending (order per
subscription). The check used the index on (subscription_id, seq) and then read every earlier
delivery's row for its state: delivered rows are kept for replay (--delivery-retention, 7 days by
default), so each claimed row cost one row read per retained delivery of its subscription. With
(subscription_id, state, seq) the check is one index probe.

Revision ID: 0004_pending_by_subscription
Revises: 0003_callback_host
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004_pending_by_subscription"
down_revision: str | Sequence[str] | None = "0003_callback_host"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("hub_deliveries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_hub_deliveries_subscription_state_seq", ["subscription_id", "state", "seq"], unique=False
        )
        batch_op.drop_index("ix_hub_deliveries_subscription_seq")


def downgrade() -> None:
    with op.batch_alter_table("hub_deliveries", schema=None) as batch_op:
        batch_op.create_index("ix_hub_deliveries_subscription_seq", ["subscription_id", "seq"], unique=False)
        batch_op.drop_index("ix_hub_deliveries_subscription_state_seq")
