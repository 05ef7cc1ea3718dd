"""The relay's tables.

Revision ID: 0001_relay
Revises: None
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_relay"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "relay_registrations",
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("secret", sa.String(64), nullable=False),
        sa.Column("lease_seconds", sa.Float(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_relay_registrations")),
    )
    op.create_index("ix_relay_registrations_expires_at", "relay_registrations", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_relay_registrations_expires_at", table_name="relay_registrations")
    op.drop_table("relay_registrations")
