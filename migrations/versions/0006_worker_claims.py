"""Claims belong to a live worker: a heartbeat row per outbox worker, and the worker on each claim.

A claim used to last delivery_claim_seconds whoever held it, so a killed process's claims froze
their subscriptions for two minutes. With the worker on the claim, the claim query takes a claim
over as soon as its worker's heartbeat is stale.

Revision ID: 0006_worker_claims
Revises: 0005_client_shares
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_worker_claims"
down_revision: str | Sequence[str] | None = "0005_client_shares"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "hub_workers",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("node", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hub_workers")),
    )
    with op.batch_alter_table("hub_deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claim_worker", sa.String(length=32), nullable=True))
        batch_op.create_index("ix_hub_deliveries_claim_worker", ["claim_worker"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("hub_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_hub_deliveries_claim_worker")
        batch_op.drop_column("claim_worker")
    op.drop_table("hub_workers")
