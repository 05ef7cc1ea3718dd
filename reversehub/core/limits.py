"""Request budgets counted in the broker, so N processes behind one Redis share one budget.

A limit is named ``CLASS`` (per client address) or ``CLASS:KEY`` (per name: the relay name of a
registration, each topic of a publish, the callback host of a subscription, ...). Budgets hold per
fixed window of ``--rate-limit-window`` seconds; each counter is a broker key that names its window
(``incr`` with a time-to-live), so it dies with the window. Over budget, :meth:`Limits.hit` says how
long until the window ends (the ``Retry-After`` of a 429).

Who counts what: the server's middleware counts per client, by class, from method and path alone
(``reversehub.server.ratelimit``); the handler that parsed a request counts the names it found in it
(``hub.endpoints``, ``relay.endpoints``), so no body is read twice to guess a name.

Should the broker fail, requests pass (limits are protection, not correctness) and it is logged.
Clients in ``--rate-limit-exempt`` (loopback by default, for local tools and benchmarks) and the
server's own in-process requests are never limited.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import time
import weakref
from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter

from reversehub.core.addresses import in_networks, networks
from reversehub.core.broker.base import Broker
from reversehub.core.contracts import IN_PROCESS_CLIENT
from reversehub.core.settings import Settings

__all__ = ["DEFAULT_LIMITS", "MAX_NAMES", "Limits", "hidden", "parse_limits", "reason"]

logger = logging.getLogger(__name__)

# Requests per window (10 s by default) per client address ("CLASS") and per name ("CLASS:KEY").
# Generous: a busy but honest client never meets them. Override with --rate-limit CLASS[:KEY]=N.
DEFAULT_LIMITS: Mapping[str, int] = {
    "registration": 300,
    "registration:name": 60,
    "poll": 20_000,
    "poll:registration": 10_000,
    "reply": 20_000,
    "publish": 2_000,
    "publish:topic": 600,
    "subscribe": 2_000,
    "subscribe:callback-host": 500,
    "relay": 20_000,
    "relay:name": 10_000,
    # /hub/replay queues deliveries again (outbound work): a handful per client and per subscription.
    "replay": 20,
    "replay:subscription": 5,
}

# Names counted per request: a ping may name many topics (hub.url is repeatable), and each counter
# is a broker round trip.
MAX_NAMES = 20

# One refusal counter per metrics registry, however many Limits are built on it.
_COUNTERS: weakref.WeakKeyDictionary[CollectorRegistry, Counter] = weakref.WeakKeyDictionary()


def parse_limits(overrides: Iterable[str]) -> dict[str, int]:
    """The defaults with ``CLASS[:KEY]=N`` overrides applied (0: no limit). ValueError if unknown."""
    limits = dict(DEFAULT_LIMITS)
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in limits:
            raise ValueError(f"unknown rate limit {key!r}: one of {', '.join(DEFAULT_LIMITS)}")
        try:
            limits[key] = int(value)
        except ValueError:
            raise ValueError(f"rate limit {key}: {value!r} is not a whole number") from None
    return limits


def hidden(secret: str) -> str:
    """A capability never goes to the broker as it is (Redis keys are visible to its operators)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:24]


def _bounded(who: str) -> str:
    """Keys stay short however long a topic URL or a name someone sends."""
    return who if len(who) <= 80 else who.split("=", 1)[0] + "=" + hidden(who)


def reason(limit: str) -> str:
    """The short reason of a 429 for ``limit``: ``rate limit exceeded (publish per topic)``."""
    kind, _, per = limit.partition(":")
    return f"rate limit exceeded ({kind} per {per or 'client'})"


def _refusals(registry: CollectorRegistry) -> Counter:
    counter = _COUNTERS.get(registry)
    if counter is None:
        counter = _COUNTERS[registry] = Counter(
            "reversehub_rate_limited", "Requests refused with 429, by limit", ["limit"], registry=registry
        )
    return counter


class Limits:
    """The budgets of ``--rate-limit``, counted in ``broker``; built once per app on its services."""

    def __init__(self, settings: Settings, broker: Broker, metrics: CollectorRegistry) -> None:
        self.window = settings.rate_limit_window
        self.budgets = parse_limits(settings.rate_limit)
        self._broker = broker
        self._metrics = metrics
        exempt = networks(settings.rate_limit_exempt)
        # Parsing an address costs more than the rest of the decision: remember it per client address.
        self._is_exempt = functools.lru_cache(maxsize=4096)(lambda host: in_networks(host, exempt))

    def applies(self, client: tuple[str, int] | None) -> bool:
        """Whether requests from ``client`` are counted: limits are on (a window above 0), and it is
        neither the server's own in-process client nor in ``--rate-limit-exempt``."""
        if self.window <= 0:
            return False
        if client is None:
            return True
        return tuple(client) != IN_PROCESS_CLIENT and not self._is_exempt(str(client[0]))

    async def hit(self, limit: str, who: str) -> int | None:
        """Count one request against ``limit`` (``"publish"``, ``"publish:topic"``) for ``who``
        (``"client=203.0.113.7"``, ``"topic=https://…"``).

        None while within budget (or when ``limit`` is off); else the whole seconds until the
        window ends, for ``Retry-After``, and the refusal is counted in ``reversehub_rate_limited``.
        """
        budget = self.budgets.get(limit, 0)
        if budget <= 0:
            return None
        now = time.time()
        slot = int(now // self.window)
        kind = limit.partition(":")[0]
        try:
            count = await self._broker.incr(f"rl:{kind}:{_bounded(who)}:{slot}", ttl=self.window)
        except Exception:
            logger.warning("rate limit counter unavailable; letting the request pass", exc_info=True)
            return None
        if count <= budget:
            return None
        _refusals(self._metrics).labels(limit=limit).inc()
        return max(1, math.ceil((slot + 1) * self.window - now))

    async def hit_names(self, limit: str, names: Iterable[str]) -> int | None:
        """:meth:`hit` for each of the first :data:`MAX_NAMES` ``names`` (``"KEY=value"``), stopping at
        the first over budget: a request refused for one name is not counted against the next."""
        for count, who in enumerate(names):
            if count >= MAX_NAMES:
                break
            retry_after = await self.hit(limit, who)
            if retry_after is not None:
                return retry_after
        return None
