"""The hub's tables: subscriptions, topics, feed entries, SUP sources, payloads, deliveries.

Revision ID: 0002_hub
Revises: 0001_relay
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_hub"
down_revision: str | Sequence[str] | None = "0001_relay"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "hub_payloads",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uid", sa.String(length=32), nullable=False),
        sa.Column("topic", sa.String(length=2048), nullable=False),
        sa.Column("content_type", sa.String(length=255), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hub_payloads")),
        sa.UniqueConstraint("uid", name=op.f("uq_hub_payloads_uid")),
    )
    with op.batch_alter_table("hub_payloads", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_hub_payloads_created_at"), ["created_at"], unique=False)

    op.create_table(
        "hub_subscriptions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("topic", sa.String(length=2048), nullable=False),
        sa.Column("callback", sa.String(length=2048), nullable=False),
        sa.Column("secret", sa.String(length=200), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("lease_seconds", sa.Integer(), nullable=False),
        sa.Column("verified_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("last_failure_at", sa.Float(), nullable=True),
        sa.Column("last_failure", sa.String(length=255), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hub_subscriptions")),
        sa.UniqueConstraint("topic", "callback", name=op.f("uq_hub_subscriptions_topic")),
    )
    with op.batch_alter_table("hub_subscriptions", schema=None) as batch_op:
        batch_op.create_index("ix_hub_subscriptions_topic_state", ["topic", "state"], unique=False)

    op.create_table(
        "hub_sup_sources",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("etag", sa.String(length=255), nullable=True),
        sa.Column("last_modified", sa.String(length=255), nullable=True),
        sa.Column("period", sa.Float(), nullable=False),
        sa.Column("next_poll_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hub_sup_sources")),
        sa.UniqueConstraint("url", name=op.f("uq_hub_sup_sources_url")),
    )
    with op.batch_alter_table("hub_sup_sources", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_hub_sup_sources_next_poll_at"), ["next_poll_at"], unique=False)

    op.create_table(
        "hub_topics",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("content_type", sa.String(length=255), nullable=True),
        sa.Column("etag", sa.String(length=255), nullable=True),
        sa.Column("last_modified", sa.String(length=255), nullable=True),
        sa.Column("body_hash", sa.String(length=64), nullable=True),
        sa.Column("fetched_at", sa.Float(), nullable=True),
        sa.Column("ping_at", sa.Float(), nullable=True),
        sa.Column("fetch_claimed_until", sa.Float(), nullable=True),
        sa.Column("next_poll_at", sa.Float(), nullable=True),
        sa.Column("poll_interval", sa.Float(), nullable=False),
        sa.Column("sup_url", sa.String(length=2048), nullable=True),
        sa.Column("sup_id", sa.String(length=255), nullable=True),
        sa.Column("sup_seen", sa.String(length=255), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hub_topics")),
        sa.UniqueConstraint("url", name=op.f("uq_hub_topics_url")),
    )
    with op.batch_alter_table("hub_topics", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_hub_topics_next_poll_at"), ["next_poll_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_hub_topics_ping_at"), ["ping_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_hub_topics_updated_at"), ["updated_at"], unique=False)

    op.create_table(
        "hub_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("payload_id", sa.Integer(), nullable=False),
        sa.Column("subscription_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.Float(), nullable=False),
        sa.Column("claim_token", sa.String(length=32), nullable=True),
        sa.Column("claimed_until", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["payload_id"],
            ["hub_payloads.id"],
            name=op.f("fk_hub_deliveries_payload_id_hub_payloads"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["hub_subscriptions.id"],
            name=op.f("fk_hub_deliveries_subscription_id_hub_subscriptions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hub_deliveries")),
    )
    with op.batch_alter_table("hub_deliveries", schema=None) as batch_op:
        batch_op.create_index("ix_hub_deliveries_due", ["state", "next_attempt_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_hub_deliveries_payload_id"), ["payload_id"], unique=False)
        batch_op.create_index("ix_hub_deliveries_subscription_seq", ["subscription_id", "seq"], unique=False)

    op.create_table(
        "hub_entries",
        sa.Column("topic_id", sa.Integer(), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["topic_id"], ["hub_topics.id"], name=op.f("fk_hub_entries_topic_id_hub_topics"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("topic_id", "key_hash", name=op.f("pk_hub_entries")),
    )


def downgrade() -> None:
    op.drop_table("hub_entries")
    with op.batch_alter_table("hub_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_hub_deliveries_subscription_seq")
        batch_op.drop_index(batch_op.f("ix_hub_deliveries_payload_id"))
        batch_op.drop_index("ix_hub_deliveries_due")

    op.drop_table("hub_deliveries")
    with op.batch_alter_table("hub_topics", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_hub_topics_updated_at"))
        batch_op.drop_index(batch_op.f("ix_hub_topics_ping_at"))
        batch_op.drop_index(batch_op.f("ix_hub_topics_next_poll_at"))

    op.drop_table("hub_topics")
    with op.batch_alter_table("hub_sup_sources", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_hub_sup_sources_next_poll_at"))

    op.drop_table("hub_sup_sources")
    with op.batch_alter_table("hub_subscriptions", schema=None) as batch_op:
        batch_op.drop_index("ix_hub_subscriptions_topic_state")

    op.drop_table("hub_subscriptions")
    with op.batch_alter_table("hub_payloads", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_hub_payloads_created_at"))

    op.drop_table("hub_payloads")
