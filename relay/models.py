"""The relay's tables on the shared declarative base.

A registration is the relay's main durable state: waiting polls and queued requests are transient and
live in the broker. ``secret`` keys the HMACs that make request and private URLs self-verifying
capabilities (relay.registry), so they need no rows and survive restarts.

Two more tables belong to names: a mailbox name's stored requests (:class:`Mail`, relay.mailbox) and
every name's recent exchanges for its owner's inspector (:class:`Exchange`, relay.inspector). Both
carry the ``created_at`` of the registration they were made under, so a name registered anew (by
someone else, perhaps) never sees what was stored for the one before.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Float, Index, Integer, LargeBinary, String, false
from sqlalchemy.orm import Mapped, mapped_column

from reversehub.core.db import Base


class Registration(Base):
    __tablename__ = "relay_registrations"

    # Lowercased DNS label (RFC 1034): names are case-insensitive.
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    # sha256 hex of the registration token; never the token itself.
    token_hash: Mapped[str] = mapped_column(String(64))
    # 32 random bytes, hex: the HMAC key of this registration's capabilities. A new registration of
    # the same name gets a new secret, so the old private and request URLs stop working.
    secret: Mapped[str] = mapped_column(String(64))
    lease_seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)
    # Unix time after which a dormant registration is deleted; pushed forward while pollers come.
    expires_at: Mapped[float] = mapped_column(Float)
    # Who created it (reversehub.core.limits.client_key: an address, an IPv6 /64), for the per-client
    # share of --max-registrations; None for a client exempt from limits.
    client: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Mailbox mode (relay.mailbox): requests that find no poller are stored and answered 202.
    mailbox: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (
        Index("ix_relay_registrations_expires_at", "expires_at"),
        Index("ix_relay_registrations_client", "client"),
    )


class Mail(Base):
    """A request stored for a mailbox name while its application was away, and later its response."""

    __tablename__ = "relay_mailbox"

    # Arrival order: pollers are handed the lowest pending id first.
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63))
    registered_at: Mapped[float] = mapped_column(Float)
    # sha256 hex of the Location capability: a leaked table does not hand out the URLs.
    location_hash: Mapped[str] = mapped_column(String(64), unique=True)
    client: Mapped[str] = mapped_column(String(64))
    # The request as message/http; emptied once answered (the response is what is fetched then).
    message: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[float] = mapped_column(Float)
    # "pending" (waits for a poller), "taken" (a poller has it until due_at), "answered".
    state: Mapped[str] = mapped_column(String(8))
    due_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The response as the relay serialized it (relay.wire.serialize_response).
    response: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # Bytes this row holds (message + response), for the per-name and total bounds.
    size: Mapped[int] = mapped_column(Integer)

    __table_args__ = (
        Index("ix_relay_mailbox_name_state_id", "name", "state", "id"),
        Index("ix_relay_mailbox_received_at", "received_at"),
    )


class Exchange(Base):
    """One request to a name and what answered it, kept for the name's owner (the inspector)."""

    __tablename__ = "relay_exchanges"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63))
    registered_at: Mapped[float] = mapped_column(Float)
    at: Mapped[float] = mapped_column(Float)
    client: Mapped[str] = mapped_column(String(64))
    # The request as message/http, its body cut at --inspector-max-body bytes (then no replay).
    request: Mapped[bytes] = mapped_column(LargeBinary)
    request_truncated: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[int] = mapped_column(Integer)
    # What the relay or the application answered ("replied", "stored", "NoPoller", ...).
    outcome: Mapped[str] = mapped_column(String(32))
    # The response (serialized, cut like the request); None when the relay answered by itself.
    response: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    response_truncated: Mapped[bool] = mapped_column(Boolean)
    duration_ms: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_relay_exchanges_name_id", "name", "id"),)
