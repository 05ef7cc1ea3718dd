"""The composition root: the one place that knows both the relay and the hub.

``create_app(settings)`` returns a Starlette app whose lifespan opens the database (migrating it to
head), the broker and the outbound HTTP client, builds the relay and hub services on ``app.state``
and runs their background work in one task group. Routes find their service on ``request.app.state``
(httpx's ASGITransport never delivers lifespan-yielded state, so we do not use it).

A database that cannot serve (full, read-only, down: :func:`reversehub.core.db.unavailable`) or a
broker that cannot be reached is answered here, for every route of both halves, with 503, a
``Retry-After`` and a one-line reason (:func:`unavailable_response`), never a 500, and ``/readyz``
says so for a while (:func:`reversehub.server.health.storage_failed`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx
from prometheus_client import CollectorRegistry
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from hub.routes import routes as hub_routes
from hub.service import Hub
from relay import endpoints as relay_endpoints
from relay.routes import HotRoutes, RelayUrls
from relay.routes import routes as relay_routes
from relay.service import Relay
from reversehub.core import db
from reversehub.core.broker import Broker, BrokerClosed, BrokerUnavailable, make_broker
from reversehub.core.egress import Egress
from reversehub.core.outbound import HttpxOutbound, LeanOutbound, Outbound, OwnRelay, own_urls
from reversehub.core.services import Services
from reversehub.core.settings import Settings
from reversehub.core.supervise import essential
from reversehub.server import dashboard, health, landing, tlsask
from reversehub.server.accesslog import AccessLogMiddleware
from reversehub.server.accesslog import logger as access_logger
from reversehub.server.cors import Cors
from reversehub.server.ratelimit import RateLimitMiddleware
from reversehub.server.web import routes as client_routes

logger = logging.getLogger(__name__)

# Client addresses whose rate-limit exemption is remembered (ReverseHub._is_unlimited).
UNLIMITED_CACHED = 4096
# Seconds a client is asked to wait when the database or the broker cannot serve.
UNAVAILABLE_RETRY_AFTER = 5


def unavailable_reason(exc: BaseException) -> str | None:
    """ "broker unavailable" or "storage unavailable" for a failure worth a 503; None for any other
    error (a bug, which stays a 500)."""
    if isinstance(exc, BrokerUnavailable | BrokerClosed):
        return "broker unavailable"
    if db.unavailable(exc):
        return "storage unavailable"
    return None


def unavailable_response(exc: BaseException) -> Response | None:
    """503 with ``Retry-After`` for a storage or broker failure; None for any other error. Only the
    driver's own message is logged: SQLAlchemy's text of the error carries the statement's
    parameters, which may hold secrets."""
    reason = unavailable_reason(exc)
    if reason is None:
        return None
    logger.error("%s (%s: %s); answered 503", reason, type(exc).__name__, getattr(exc, "orig", None) or exc)
    return PlainTextResponse(
        f"{reason}; try again shortly\n", status_code=503, headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER)}
    )


def _background_lost(app: Starlette, reason: str) -> None:
    """The app's background work ended while it serves: from now on every request is answered 503,
    ``/healthz`` says so, and ``serve`` exits non-zero (:class:`reversehub.server.serve.DrainingServer`)."""
    if isinstance(app, ReverseHub) and app.failed is None:
        app.failed = reason


async def _unavailable(request: Request, exc: Exception) -> Response:
    """Starlette's exception handler for the errors :func:`unavailable_response` may map."""
    response = unavailable_response(exc)
    if response is None:
        raise exc
    health.storage_failed(request.app.state, unavailable_reason(exc))
    return response


# Starlette looks a handler up along the exception's MRO: these cover every driver error and the
# broker's two; the handler gives back what is not a storage or broker failure.
EXCEPTION_HANDLERS = {
    DBAPIError: _unavailable,
    PoolTimeout: _unavailable,
    BrokerUnavailable: _unavailable,
    BrokerClosed: _unavailable,
}


class ReverseHub(Starlette):
    """Starlette, with the relay's two hot paths (public URLs, request URLs) found before the router.

    A relayed request is three exchanges on them (the request, the poll, the reply). They go through
    the access log and the rate limits, but not through Starlette's error and exception layers or
    the router's walk over every route: about a third of the server's Python time per relayed
    request (bench/relay_throughput.py). Any other path, or one the relay's routes would not match,
    takes the full stack. A request to a host-based name (``--relay-domain``) is always relayed from
    here, whatever its path: no route of the main host (the dashboard, the hub) may answer on a relay
    application's origin.
    """

    def __init__(self, *, settings: Settings, urls: RelayUrls, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._hot_route = HotRoutes(urls)
        self._hot: dict[int, ASGIApp] = {}
        self._settings = settings
        self._limits = RateLimitMiddleware(self.router, settings=settings)  # only asked whether limits apply
        # Per client address (host, port), once started; bounded, since every connection brings one
        # (emptied when full: a plain dict's lookup costs a fraction of an LRU cache's, and three
        # exchanges per relayed request ask it).
        self._unlimited: dict[tuple[str, int], bool] = {}
        # Why the app's background work ended while it serves (None while it runs): the process
        # is on its way out, and answers nothing but 503 meanwhile.
        self.failed: str | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if self.failed is not None:
                response = PlainTextResponse(
                    f"server failing ({self.failed}); try again shortly\n",
                    status_code=503,
                    headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER), "Connection": "close"},
                )
                await response(scope, receive, send)
                return
            found = self._hot_route(scope)
            if found is not None:
                endpoint, scope["path_params"] = found
                scope["app"] = self
                try:
                    if self._is_unlimited(scope) and not access_logger.isEnabledFor(logging.INFO):
                        await endpoint(scope, receive, send)  # what the two middlewares would do, minus their frames
                        return
                    stack = self._hot.get(id(endpoint))
                    if stack is None:
                        stack = self._hot[id(endpoint)] = AccessLogMiddleware(
                            RateLimitMiddleware(endpoint, settings=self._settings)
                        )
                    await stack(scope, receive, send)
                except Exception as exc:
                    # Starlette's exception layer is skipped here: map a storage failure the same way.
                    await self._answer_unavailable(exc, scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _answer_unavailable(self, exc: Exception, scope: Scope, receive: Receive, send: Send) -> None:
        response = unavailable_response(exc)
        if response is None:
            raise exc
        health.storage_failed(self.state, unavailable_reason(exc))
        try:
            await response(scope, receive, send)
        except Exception:
            raise exc from None  # the response had begun: there is nothing left to answer with

    def _is_unlimited(self, scope: Scope) -> bool:
        """``RateLimitMiddleware.unlimited``, remembered per connection's client address: three
        exchanges per relayed request ask it, and once the app has started only the client counts."""
        client = scope.get("client")
        if type(client) is not tuple:
            return self._limits.unlimited(scope)
        unlimited = self._unlimited.get(client)
        if unlimited is None:
            unlimited = self._limits.unlimited(scope)
            if self.state.services is not None:
                if len(self._unlimited) >= UNLIMITED_CACHED:
                    self._unlimited.clear()
                self._unlimited[client] = unlimited
        return unlimited


class CorsReverseHub(ReverseHub):
    """:class:`ReverseHub` behind the CORS layer (``--cors-origin``, reversehub.server.cors), in front
    of everything, hot paths included: request URLs are what a cross-origin page polls. A class of
    its own, so that without CORS a held poll keeps not one frame more."""

    def __init__(self, *, settings: Settings, urls: RelayUrls, **kwargs: object) -> None:
        super().__init__(settings=settings, urls=urls, **kwargs)
        self._cors = Cors(functools.partial(ReverseHub.__call__, self), settings=settings, urls=urls)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._cors(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(
    settings: Settings,
    *,
    broker: Broker | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    outbound: Outbound | None = None,
) -> ReverseHub:
    """Build the app. Tests may inject the ``broker``, and what reaches the network: an ``outbound``
    of their own, or an httpx ``transport`` to send every such request through. Requests to our own
    relay are served in-process either way."""
    urls = RelayUrls(settings)
    # Whether a URL is one our own relay serves (host-based names included), handed to the hub as a
    # plain callable (hub never imports relay): the outbound seam answers it in-process, the SSRF
    # guard always allows it and the outbox shares no per-host limit for it.
    is_own = own_urls(settings.public_origin, urls.addresses)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = db.create_engine(settings.database_url)
        try:
            if settings.migrate:
                await db.migrate(engine)
            the_broker = broker if broker is not None else make_broker(settings.redis_url)
            built: HttpxOutbound | None = None  # what is built here is closed here
            network: Outbound
            if outbound is not None:
                network = outbound
            elif transport is None:
                network = built = LeanOutbound.default(
                    settings.delivery_timeout,
                    egress=Egress(allow_private=settings.allow_private_networks),
                    connect_timeout=settings.connect_timeout,
                )
            else:
                client = httpx.AsyncClient(
                    transport=transport, timeout=httpx.Timeout(settings.delivery_timeout), follow_redirects=False
                )
                network = built = HttpxOutbound(client)
            own = OwnRelay(app, is_own, network)
            services = Services(
                settings=settings,
                engine=engine,
                sessions=db.sessionmaker(engine),
                broker=the_broker,
                outbound=own,
                metrics=CollectorRegistry(auto_describe=True),
                is_own=is_own,
                own_name=lambda url: found[0] if (found := urls.addresses(url)) is not None else None,
            )
            relay = Relay(services)
            own.post_here = functools.partial(relay_endpoints.post_here, relay)
            hub = Hub(services)
            app.state.relay, app.state.hub = relay, hub
            lost = functools.partial(_background_lost, app)
            async with anyio.create_task_group() as tg:
                # Each runs its loops supervised (a failing loop restarts); if one ends all the
                # same, the process cannot go on, and says so (serve exits non-zero).
                tg.start_soon(essential, "the relay's background work", relay.run, lambda: relay.closing, lost)
                tg.start_soon(essential, "the hub's background work", hub.run, lambda: hub.closing, lost)
                app.state.services = services
                logger.info("reversehub serving at %s", settings.public_origin)
                try:
                    yield
                finally:
                    app.state.services = None
                    await hub.aclose()
                    await relay.aclose()
                    tg.cancel_scope.cancel()
            if built is not None:
                await built.aclose()
            if broker is None:
                await the_broker.aclose()
        finally:
            await engine.dispose()

    app = (CorsReverseHub if settings.cors_origins else ReverseHub)(
        settings=settings,
        urls=urls,
        routes=[
            *health.routes(),
            *landing.routes(),  # ahead of the admin routes: on the main host the dashboard is at /dashboard/
            *tlsask.routes(),
            *_admin_routes_here(settings),
            *relay_routes(urls),
            *hub_routes(),
            *client_routes(),
        ],
        middleware=[
            Middleware(AccessLogMiddleware),
            # Per-client budgets from method and path: refused requests cost no more than a counter.
            # Who may publish or register is decided by the handlers (hub.authz, relay.authz).
            Middleware(RateLimitMiddleware, settings=settings),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.services = None
    return app


# The admin side ---------------------------------------------------------------------------------
def admin_on_main_host(settings: Settings) -> bool:
    """Whether the dashboard lives on the main listener: only with host-based relay names, where
    every name has an origin of its own (``NAME.relay-domain``) and the main host is none of them.
    With path-based names every ``/relay/NAME/`` page shares the main origin, so the dashboard gets
    a listener of its own (:func:`create_admin_app`, ``--admin-listen``)."""
    return bool(settings.relay_domain)


def admin_listener_wanted(settings: Settings) -> bool:
    """Whether ``serve`` opens ``--admin-listen``: there is an admin, and its origin is not the main one."""
    return settings.admin_token is not None and not admin_on_main_host(settings)


async def _elsewhere(request: Request) -> Response:
    return PlainTextResponse("Not Found", status_code=404)


def _admin_routes_here(settings: Settings) -> list[BaseRoute]:
    """The admin routes the main app serves, ahead of the relay's (they shadow its ``GET /reversehttp``).

    Without an admin token there is no admin side and the gateway's list of names stays open.
    """
    if settings.admin_token is None:
        return []
    if admin_on_main_host(settings):
        return [*dashboard.listing_routes(), *dashboard.routes()]
    return [Route("/reversehttp", _elsewhere, methods=["GET", "HEAD"])]


def create_admin_app(main: Starlette) -> Starlette:
    """The dashboard, its API and the relay's list of names, for an origin of their own.

    It has no lifespan: it shares ``main``'s state (settings, services, relay, hub), which ``main``'s
    lifespan fills, and serves no relay public URL, so no relayed page is ever same-origin with it.
    """
    admin = Starlette(
        routes=[*dashboard.listing_routes(), *dashboard.routes()],
        middleware=[Middleware(AccessLogMiddleware)],
        exception_handlers=EXCEPTION_HANDLERS,
    )
    admin.state = main.state
    return admin
