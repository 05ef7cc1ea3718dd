"""The hub's tables.

Revision ID: 0002_hub
Revises: 0001_relay
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0002_hub"
down_revision: str | Sequence[str] | None = "0001_relay"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
