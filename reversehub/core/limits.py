"""Request budgets counted in the broker, so N processes behind one Redis share one budget.

A limit is named ``CLASS`` (per client) or ``CLASS:KEY`` (per client and name: the relay name of a
registration, each topic of a publish, the callback host of a subscription, ...). A budget per name
is always counted per client as well: were it shared, one client could spend it and lock a topic's
publisher, a name's owner or a callback host's subscribers out (:meth:`Limits.hit_names`). A client
is its address, but an IPv6 client is its /64 (:func:`client_key`): one subscriber line commonly
gets a whole /64, so counting per address would hand it billions of budgets.

Budgets hold per fixed window of ``--rate-limit-window`` seconds (``login``: a minute, see
:data:`WINDOWS`); each counter is a broker key that names its window (``incr`` with a time-to-live),
so it dies with the window. Over budget, :meth:`Limits.hit` says how long until the window ends
(the ``Retry-After`` of a 429). A request may cost more than one (a ping naming many topics).

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
import ipaddress
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

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_NAMES",
    "WINDOWS",
    "Limits",
    "client_key",
    "hidden",
    "parse_limits",
    "reason",
]

logger = logging.getLogger(__name__)

# Requests per window (10 s by default) per client ("CLASS") and per client and name ("CLASS:KEY").
# Generous: a busy but honest client never meets them. Override with --rate-limit CLASS[:KEY]=N.
# ``publish`` counts a ping once per topic it names; ``login`` counts dashboard logins and requests
# that present a wrong admin credential (guessing the admin token).
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
    "login": 10,
}

# Classes whose window is not --rate-limit-window: guesses at the admin token are counted per minute,
# so that a person who mistyped waits a minute at most while a guesser gets ten a minute.
WINDOWS: Mapping[str, float] = {"login": 60.0}

# IPv6 clients are counted per /64, the smallest prefix a subscriber line is commonly given.
IPV6_CLIENT_PREFIX = 64

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


@functools.lru_cache(maxsize=4096)
def client_key(host: str | None) -> str:
    """Who a budget belongs to: the client's IPv4 address, or the /64 of its IPv6 address.

    An IPv4 address in IPv6 clothing (``::ffff:203.0.113.7``) is that IPv4 address; anything that
    is not an address (a Unix socket, a test client) is counted as it is.
    """
    if not host:
        return "-"
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_CLIENT_PREFIX), strict=False))
    return str(address)


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

    @staticmethod
    def client(client: tuple[str, int] | None) -> str:
        """``"client=KEY"``: the budget holder of an ASGI ``client`` (:func:`client_key`)."""
        return "client=" + client_key(str(client[0]) if client else None)

    def exempt(self, client: tuple[str, int] | None) -> bool:
        """Whether ``client`` is the server's own in-process client or in ``--rate-limit-exempt``: never
        limited, and holding no share of a cap (``--max-registrations-per-client`` and the like)."""
        if client is None:
            return False
        return tuple(client) == IN_PROCESS_CLIENT or self._is_exempt(str(client[0]))

    def applies(self, client: tuple[str, int] | None) -> bool:
        """Whether requests from ``client`` are counted: limits are on (a window above 0) and the
        client is not :meth:`exempt`."""
        return self.window > 0 and not self.exempt(client)

    def _slot(self, limit: str, who: str, now: float) -> tuple[str, int, float]:
        """(broker key, window number, window length) of ``who``'s counter for ``limit`` at ``now``."""
        kind = limit.partition(":")[0]
        window = WINDOWS.get(kind, self.window)
        slot = int(now // window)
        return f"rl:{kind}:{_bounded(who)}:{slot}", slot, window

    async def hit(self, limit: str, who: str, cost: int = 1) -> int | None:
        """Count one request of ``cost`` against ``limit`` (``"publish"``, ``"publish:topic"``) for
        ``who`` (``"client=203.0.113.7"``, ``"topic=https://…,client=203.0.113.7"``).

        None while within budget (or when ``limit`` is off); else the whole seconds until the
        window ends, for ``Retry-After``, and the refusal is counted in ``reversehub_rate_limited``.
        """
        budget = self.budgets.get(limit, 0)
        if budget <= 0 or cost <= 0:
            return None
        now = time.time()
        key, slot, window = self._slot(limit, who, now)
        try:
            count = await self._broker.incr(key, ttl=window, amount=cost)
        except Exception:
            logger.warning("rate limit counter unavailable; letting the request pass", exc_info=True)
            return None
        if count <= budget:
            return None
        _refusals(self._metrics).labels(limit=limit).inc()
        return max(1, math.ceil((slot + 1) * window - now))

    async def spent(self, limit: str, who: str) -> int | None:
        """Whether ``who`` has already spent ``limit`` in this window, without counting anything:
        the seconds until the window ends, or None. For budgets counted only on failure (logins)."""
        budget = self.budgets.get(limit, 0)
        if budget <= 0:
            return None
        now = time.time()
        key, slot, window = self._slot(limit, who, now)
        try:
            value = await self._broker.get(key)
        except Exception:
            logger.warning("rate limit counter unavailable; letting the request pass", exc_info=True)
            return None
        if value is None or int(value) < budget:
            return None
        _refusals(self._metrics).labels(limit=limit).inc()
        return max(1, math.ceil((slot + 1) * window - now))

    async def hit_names(self, limit: str, names: Iterable[str], client: str) -> int | None:
        """:meth:`hit` for each of the first :data:`MAX_NAMES` ``names`` (``"KEY=value"``), each
        counted for ``client`` (:meth:`client`) alone, stopping at the first over budget: a request
        refused for one name is not counted against the next."""
        for count, name in enumerate(names):
            if count >= MAX_NAMES:
                break
            retry_after = await self.hit(limit, f"{name},{client}")
            if retry_after is not None:
                return retry_after
        return None
