"""The relay's tables on the shared declarative base.

A registration is the only durable relay state: waiting polls and queued requests are transient and
live in the broker. ``secret`` keys the HMACs that make request and private URLs self-verifying
capabilities (relay.registry), so they need no rows and survive restarts.
"""

from __future__ import annotations

from sqlalchemy import Float, Index, String
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

    __table_args__ = (
        Index("ix_relay_registrations_expires_at", "expires_at"),
        Index("ix_relay_registrations_client", "client"),
    )
