"""The relay's tables.

Revision ID: 0001_relay
Revises: None
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0001_relay"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
