"""Publishers' Idempotency-Keys: a retried publish is stored once.

A publish cut off by a kill may have been stored; the publisher's retry must not store it again
under a new webhook-id. The key (its digest per topic), a fingerprint of the request and the status
answered are committed with the payload, and kept for --publish-idempotency-retention seconds.

Revision ID: 0008_idempotency
Revises: 0007_mailboxes
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_idempotency"
down_revision: str | Sequence[str] | None = "0007_mailboxes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "hub_publish_keys",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_hub_publish_keys")),
    )
    with op.batch_alter_table("hub_publish_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_hub_publish_keys_created_at"), ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("hub_publish_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_hub_publish_keys_created_at"))
    op.drop_table("hub_publish_keys")
