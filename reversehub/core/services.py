"""What every component gets from the composition root: settings, database, broker, outbound HTTP."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from reversehub.core.broker import Broker
from reversehub.core.limits import Limits
from reversehub.core.outbound import Outbound
from reversehub.core.settings import Settings


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    broker: Broker
    # Every outbound request (verification, delivery, feed fetch): reversehub.core.outbound.
    outbound: Outbound
    metrics: CollectorRegistry
    # Whether a URL is one our own relay serves: answered in-process by ``outbound``, always allowed
    # by the SSRF guard, and outside the per-host fairness of deliveries.
    is_own: Callable[[str], bool]
    # The relay name a public URL of our own relay addresses, None for any other URL: callbacks on our
    # relay all share its host, so budgets and caps per callback host count them per name instead.
    own_name: Callable[[str], str | None] = field(default=lambda _url: None)
    # Request budgets (--rate-limit), counted in the broker: the middleware and the handlers share them.
    limits: Limits = field(init=False)

    def __post_init__(self) -> None:
        self.limits = Limits(self.settings, self.broker, self.metrics)
