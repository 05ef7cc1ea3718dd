"""Rate limits per client address and per name, counted in the broker so they hold across processes.

Each request is put in one class (registration, poll, publish, subscribe, relay) and counted against
that class's budget for its client address and, where the request shows one, for the name it
concerns: the relay name of a registration or public URL, the registration behind a request URL,
each topic of a publish, the callback host of a subscription. Budgets are per fixed window of
``--rate-limit-window`` seconds; a request over a budget gets 429 with ``Retry-After`` (the end of
the window) and is not counted further, so an abusive client does not also drain a name's budget.

Polls are long-held ``GET``s; the limit is on how often they start, never on how many are held.

Counters are broker keys (``incr`` with a time-to-live), so N processes behind one Redis share one
budget. Should the broker fail, requests pass (limits are protection, not correctness) and it is
logged. Clients in ``--rate-limit-exempt`` (loopback by default, for local tools and benchmarks)
and the server's own in-process requests are never limited.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import weakref
from collections.abc import Mapping
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter
from starlette.types import ASGIApp, Receive, Scope, Send

from relay.routes import Kind, RelayUrls
from reversehub.core.contracts import IN_PROCESS_CLIENT
from reversehub.core.services import Services
from reversehub.core.settings import Settings
from reversehub.server.security import (
    Denial,
    Form,
    FormRefused,
    client_host,
    form_value,
    in_networks,
    is_form,
    parse_networks,
    peek_form,
    publish_request,
)

logger = logging.getLogger(__name__)

# Requests per window (10 s by default) per client address ("CLASS") and per name ("CLASS:KEY").
# Generous: a busy but honest client never meets them. Override with --rate-limit CLASS[:KEY]=N.
DEFAULT_LIMITS: Mapping[str, int] = {
    "registration": 300,
    "registration:name": 60,
    "poll": 20_000,
    "poll:registration": 10_000,
    "publish": 2_000,
    "publish:topic": 600,
    "subscribe": 2_000,
    "subscribe:callback-host": 500,
    "relay": 20_000,
    "relay:name": 10_000,
}


MAX_NAMES = 20  # names counted per request
_EXEMPT_CACHE = 4096  # client addresses whose exemption is remembered, per middleware

# One counter per metrics registry, whichever middleware instance refuses (reversehub.server.app has two
# stacks: the relay's hot paths and the rest).
_COUNTERS: weakref.WeakKeyDictionary[CollectorRegistry, Counter] = weakref.WeakKeyDictionary()


def parse_limits(overrides: tuple[str, ...]) -> dict[str, int]:
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


def _hidden(secret: str) -> str:
    """A capability never goes to the broker as it is (Redis keys are visible to its operators)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:24]


def _bounded(who: str) -> str:
    """Keys stay short however long a topic URL or a name someone sends."""
    return who if len(who) <= 80 else who.split("=", 1)[0] + "=" + _hidden(who)


def _host(url: str | None) -> str:
    try:
        return (urlsplit(url or "").hostname or "").lower()
    except ValueError:
        return ""


async def classify(
    scope: Scope, receive: Receive, max_form: int, urls: RelayUrls
) -> tuple[str | None, list[str], Receive]:
    """(class, ["KEY=name", ...], receive) for a request; class None: not limited.

    The relay's URLs are recognized by its route table (``urls``), so a host-based name counts
    against the same budgets as a path-based one. Bodies are read as the relay and the hub read
    them (reversehub.server.security.publish_request).
    """
    method, path = scope["method"], scope["path"]
    found = urls.find(scope)
    if found is not None:
        kind, params = found
        if kind is Kind.GATEWAY and method == "POST":
            fields, receive = await peek_form(scope, receive, max_form)
            name = form_value(fields, "name")
            return "registration", [f"name={name.lower()}"] if name else [], receive
        if kind is Kind.PRIVATE and method in ("PUT", "DELETE"):
            return "registration", [], receive
        if kind is Kind.REQUEST and method == "GET":
            return "poll", [f"registration={_hidden(path)}"], receive
        if kind is Kind.PUBLIC:
            return "relay", [f"name={params['name'].lower()}"], receive
        return None, [], receive
    if method != "POST" or path not in ("/publish", "/hub"):
        return None, [], receive
    form: Form | None = None
    if path == "/hub" or is_form(scope):
        form, receive = await peek_form(scope, receive, max_form)
    request = publish_request(path, scope, form)
    if request is not None:
        return "publish", [f"topic={t}" for t in request[1]], receive
    return "subscribe", [f"callback-host={_host(form_value(form or [], 'hub.callback'))}"], receive


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.window = settings.rate_limit_window
        self.limits = parse_limits(settings.rate_limit)
        self.exempt = parse_networks(settings.rate_limit_exempt)
        self.urls = RelayUrls(settings)
        self._exempt: dict[str | None, bool] = {}

    def is_exempt(self, host: str | None) -> bool:
        """``host`` in ``--rate-limit-exempt``, remembered: parsing an address costs more than a request."""
        exempt = self._exempt.get(host)
        if exempt is None:
            if len(self._exempt) >= _EXEMPT_CACHE:
                self._exempt.clear()
            exempt = self._exempt[host] = in_networks(host, self.exempt)
        return exempt

    def unlimited(self, scope: Scope) -> bool:
        """No limit applies to this request: limits off, the app not started, an exempt or in-process client."""
        if scope["type"] != "http" or self.window <= 0 or "app" not in scope or scope["app"].state.services is None:
            return True
        client = scope.get("client")
        return client is not None and (tuple(client) == IN_PROCESS_CLIENT or self.is_exempt(str(client[0])))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.unlimited(scope):
            await self.app(scope, receive, send)
            return
        services: Services = scope["app"].state.services
        try:
            kind, names, receive = await classify(scope, receive, self.settings.max_form_size, self.urls)
        except FormRefused as exc:
            await Denial(exc.status, str(exc))(scope, receive, send)
            return
        if kind is not None:
            denial = await self._check(services, kind, client_host(scope) or "-", names)
            if denial is not None:
                await denial(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _check(self, services: Services, kind: str, client: str, names: list[str]) -> Denial | None:
        now = time.time()
        slot = int(now // self.window)
        # A ping may name many topics: counting each is bounded (hub.url is repeatable).
        checks = [(kind, f"client={client}")] + [(f"{kind}:{n.split('=', 1)[0]}", n) for n in names[:MAX_NAMES]]
        for limit_name, who in checks:
            limit = self.limits.get(limit_name, 0)
            if limit <= 0:
                continue
            try:
                # The key names its window, so it is dead once the window is over.
                count = await services.broker.incr(f"rl:{kind}:{_bounded(who)}:{slot}", ttl=self.window)
            except Exception:
                logger.warning("rate limit counter unavailable; letting the request pass", exc_info=True)
                return None
            if count > limit:
                self._count(services, limit_name)
                retry_after = max(1, math.ceil((slot + 1) * self.window - now))
                per = "client" if ":" not in limit_name else limit_name.split(":", 1)[1]
                return Denial(429, f"rate limit exceeded ({kind} per {per})", {"Retry-After": str(retry_after)})
        return None

    def _count(self, services: Services, limit_name: str) -> None:
        registry = services.metrics
        counter = _COUNTERS.get(registry)
        if counter is None:
            counter = _COUNTERS[registry] = Counter(
                "reversehub_rate_limited", "Requests refused with 429, by limit", ["limit"], registry=registry
            )
        counter.labels(limit=limit_name).inc()
