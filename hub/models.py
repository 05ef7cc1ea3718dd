"""The hub's tables on the shared declarative base.

Times are UNIX seconds (floats): they compare the same way on SQLite and PostgreSQL and need no
time-zone handling. Durable things only: a subscription exists once verified (W3C WebSub 5.3), a
payload is stored once however many subscribers it goes to, and a delivery row per subscriber is
the outbox (:mod:`hub.outbox`).
"""

from __future__ import annotations

import enum

from sqlalchemy import Float, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from reversehub.core.db import Base

URL_LENGTH = 2048


class SubscriptionState(enum.StrEnum):
    """A subscription row's ``state``; the values are what the column stores."""

    ACTIVE = "active"
    EXPIRED = "expired"  # the lease ran out without a renewal (WebSub 5.1 hub.lease_seconds)
    UNSUBSCRIBED = "unsubscribed"  # a verified unsubscribe (WebSub 5.3)
    GONE = "gone"  # the callback answered a delivery with 410 Gone


class DeliveryState(enum.StrEnum):
    """A delivery row's ``state``; the values are what the column stores."""

    PENDING = "pending"  # due at next_attempt_at, or claimed by a worker (hub.store.workers)
    DELIVERED = "delivered"  # the callback answered 2xx; kept for replay until the retention ends
    FAILED = "failed"  # given up after delivery_max_age
    CANCELLED = "cancelled"  # its subscription ended first


class Subscription(Base):
    """A verified (topic, callback) pair. Re-subscribing renews this row; it is never duplicated."""

    __tablename__ = "hub_subscriptions"
    __table_args__ = (
        UniqueConstraint("topic", "callback"),
        Index("ix_hub_subscriptions_topic_state", "topic", "state"),
        Index("ix_hub_subscriptions_state_callback_host", "state", "callback_host"),
        Index("ix_hub_subscriptions_state_callback_host_client", "state", "callback_host", "client"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    topic: Mapped[str] = mapped_column(String(URL_LENGTH))
    callback: Mapped[str] = mapped_column(String(URL_LENGTH))
    # The callback URL's host name, lowercased (hub.store.subscriptions.host_of): the per-host cap counts by it.
    callback_host: Mapped[str] = mapped_column(String(255), default="")
    # Who asked for it (reversehub.core.limits.client_key), for the per-client share of the per-host
    # cap; None for a client exempt from limits.
    client: Mapped[str | None] = mapped_column(String(64), nullable=True)
    secret: Mapped[str | None] = mapped_column(String(200), nullable=True)
    state: Mapped[str] = mapped_column(String(16))  # a SubscriptionState
    lease_seconds: Mapped[int] = mapped_column(Integer)
    verified_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    # The sequence number of the last delivery queued for this subscription (X-Hub-Sequence).
    seq: Mapped[int] = mapped_column(Integer, default=0)
    # Deliveries given up after delivery_max_age, and the last reason: nothing is dropped silently.
    failed: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_failure: Mapped[str | None] = mapped_column(String(255), nullable=True)
    updated_at: Mapped[float] = mapped_column(Float)


class Topic(Base):
    """What the hub knows of a topic URL: fetch validators, the last body, polling and SUP state."""

    __tablename__ = "hub_topics"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(String(URL_LENGTH), unique=True)
    content_type: Mapped[str | None] = mapped_column(String(255), nullable=True)
    etag: Mapped[str | None] = mapped_column(String(255), nullable=True)
    last_modified: Mapped[str | None] = mapped_column(String(255), nullable=True)
    body_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # None: no baseline (never fetched, or its last baseline fetch failed): the next successful
    # fetch only records what the topic holds, it distributes nothing.
    fetched_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # A publish ping that still has to be fetched (durable: recorded before the 204).
    ping_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    # When a publisher last pinged (or fat-pinged) it: such a topic is polled only as a safety net.
    pinged_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Fetches failed in a row (an error, a 4xx/5xx, an undecodable body): the next one backs off.
    fetch_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    fetch_claimed_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    next_poll_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    poll_interval: Mapped[float] = mapped_column(Float)
    # SUP (FriendFeed 2008): the SUP document that lists this feed, its SUP-ID and last update id.
    sup_url: Mapped[str | None] = mapped_column(String(URL_LENGTH), nullable=True)
    sup_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    sup_seen: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # Distributions so far and when the last one happened: our own SUP document (GET /sup).
    version: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)


class Entry(Base):
    """A feed entry already distributed: its key (id/guid, else link) and content hash."""

    __tablename__ = "hub_entries"

    topic_id: Mapped[int] = mapped_column(ForeignKey("hub_topics.id", ondelete="CASCADE"), primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64))


class SupSource(Base):
    """A SUP document the hub polls for the feeds that advertise it."""

    __tablename__ = "hub_sup_sources"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(String(URL_LENGTH), unique=True)
    etag: Mapped[str | None] = mapped_column(String(255), nullable=True)
    last_modified: Mapped[str | None] = mapped_column(String(255), nullable=True)
    period: Mapped[float] = mapped_column(Float)
    next_poll_at: Mapped[float] = mapped_column(Float, index=True)
    # The ``updated_time`` of the last document read: the next one's window must reach back to it.
    updated_time: Mapped[float | None] = mapped_column(Float, nullable=True)


class Payload(Base):
    """One distributed body, stored once."""

    __tablename__ = "hub_payloads"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(32), unique=True)
    topic: Mapped[str] = mapped_column(String(URL_LENGTH))
    content_type: Mapped[str] = mapped_column(String(255))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float, index=True)


class Delivery(Base):
    """The outbox: one row per (payload, subscriber), kept after delivery for replay."""

    __tablename__ = "hub_deliveries"
    __table_args__ = (
        Index("ix_hub_deliveries_due", "state", "next_attempt_at"),
        # Claiming asks "is an earlier delivery of this subscription pending?" for every row it
        # takes: with state in the index that is one probe, however many delivered rows are kept.
        Index("ix_hub_deliveries_subscription_state_seq", "subscription_id", "state", "seq"),
        # A dead worker's claims are found by its id (hub.store.deliveries.claim).
        Index("ix_hub_deliveries_claim_worker", "claim_worker"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    payload_id: Mapped[int] = mapped_column(ForeignKey("hub_payloads.id", ondelete="CASCADE"), index=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("hub_subscriptions.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(12))  # a DeliveryState
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float)
    claim_token: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # The lease: a claim whose worker is alive holds until then (renewed while it is held); one
    # whose worker's heartbeat is stale is claimable at once.
    claimed_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The Worker that holds the claim (None: not claimed, or claimed before workers existed).
    claim_worker: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class PublishKey(Base):
    """An ``Idempotency-Key`` a publisher sent with a fat ping, kept for the retention window
    (:mod:`hub.store.idempotency`). Committed in the publish's own transaction: a publish that was
    stored has its key, and one that was not has none."""

    __tablename__ = "hub_publish_keys"

    # sha256 of (topic, key): the key is the publisher's and may be long; its digest is enough.
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    # sha256 of the request (Content-Type and body): the same key with another request is refused.
    fingerprint: Mapped[str] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float, index=True)


class Worker(Base):
    """An outbox worker (one per process) that is alive while its heartbeat is fresh.

    ``heartbeat_at`` is the database's clock, never the process's: processes on several hosts judge
    each other's heartbeats, and their clocks may disagree by more than the staleness bound."""

    __tablename__ = "hub_workers"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # Where it runs: a worker restarted on the same node sees at once that its predecessor's
    # process is gone (hub.store.workers.node).
    node: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float] = mapped_column(Float)
