"""What every component gets from the composition root: settings, database, broker, outbound HTTP."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

import httpx
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from reversehub.core.broker import Broker
from reversehub.core.limits import Limits
from reversehub.core.settings import Settings


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    broker: Broker
    # Outbound HTTP (verification, delivery, feed fetches). Requests to our own public origin are
    # served in-process by the app itself (see reversehub.core.transport.OwnOriginTransport).
    http: httpx.AsyncClient
    metrics: CollectorRegistry
    # What outbound https trusts: the context services.http's own transport was built with, for
    # every other client of the network (hub.sender) to share: one trust policy, one CA store in
    # memory. None when a transport was injected; then httpx's default (httpx.create_ssl_context()).
    tls: ssl.SSLContext | None = None
    # Request budgets (--rate-limit), counted in the broker: the middleware and the handlers share them.
    limits: Limits = field(init=False)

    def __post_init__(self) -> None:
        self.limits = Limits(self.settings, self.broker, self.metrics)
