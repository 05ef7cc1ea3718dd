"""Mailbox names and the request inspector.

A registration may be in mailbox mode (requests that find no poller are stored, relay.mailbox);
``relay_mailbox`` holds those requests and their responses, ``relay_exchanges`` every name's recent
requests for its owner's inspector (relay.inspector).

Revision ID: 0007_mailboxes
Revises: 0006_worker_claims
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_mailboxes"
down_revision: str | Sequence[str] | None = "0006_worker_claims"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("relay_registrations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mailbox", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_table(
        "relay_mailbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("registered_at", sa.Float(), nullable=False),
        sa.Column("location_hash", sa.String(length=64), nullable=False),
        sa.Column("client", sa.String(length=64), nullable=False),
        sa.Column("message", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("state", sa.String(length=8), nullable=False),
        sa.Column("due_at", sa.Float(), nullable=True),
        sa.Column("response", sa.LargeBinary(), nullable=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_relay_mailbox")),
        sa.UniqueConstraint("location_hash", name=op.f("uq_relay_mailbox_location_hash")),
    )
    op.create_index("ix_relay_mailbox_name_state_id", "relay_mailbox", ["name", "state", "id"], unique=False)
    op.create_index("ix_relay_mailbox_received_at", "relay_mailbox", ["received_at"], unique=False)
    op.create_table(
        "relay_exchanges",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("registered_at", sa.Float(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("client", sa.String(length=64), nullable=False),
        sa.Column("request", sa.LargeBinary(), nullable=False),
        sa.Column("request_truncated", sa.Boolean(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=True),
        sa.Column("response_truncated", sa.Boolean(), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_relay_exchanges")),
    )
    op.create_index("ix_relay_exchanges_name_id", "relay_exchanges", ["name", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_relay_exchanges_name_id", table_name="relay_exchanges")
    op.drop_table("relay_exchanges")
    op.drop_index("ix_relay_mailbox_received_at", table_name="relay_mailbox")
    op.drop_index("ix_relay_mailbox_name_state_id", table_name="relay_mailbox")
    op.drop_table("relay_mailbox")
    with op.batch_alter_table("relay_registrations", schema=None) as batch_op:
        batch_op.drop_column("mailbox")
